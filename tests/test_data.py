"""Host data sources (IDX, imported npz, errors) and the on-device input pipeline."""
import gzip
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax import data, input_pipeline as pipe


def write_idx(path, array, compress=True):
  """The IDX format by its definition: 0x00 0x00 type ndim, big-endian dims, raw bytes."""
  array = np.asarray(array, np.uint8)
  payload = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
  payload += array.tobytes()
  with (gzip.open(path, 'wb') if compress else open(path, 'wb')) as f:
    f.write(payload)


def write_mnist_dir(directory, n_train=50, n_test=20, seed=0, compress=True):
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  out = {}
  for split, (img, lab), n in [('train', data._IDX_FILES['train'], n_train), ('test', data._IDX_FILES['test'], n_test)]:
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    ext = '.gz' if compress else ''
    write_idx(os.path.join(directory, img + ext), x, compress)
    write_idx(os.path.join(directory, lab + ext), y, compress)
    out[split] = (x, y)
  return out


@pytest.mark.parametrize('compress', [True, False])
def test_idx_round_trip(tmp_path, compress):
  arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
  write_idx(tmp_path / 'a', arr, compress)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / 'a')), arr)


def test_idx_errors(tmp_path):
  write_idx(tmp_path / 'a', np.zeros((10, 4), np.uint8), compress=False)
  raw = (tmp_path / 'a').read_bytes()
  (tmp_path / 'short').write_bytes(raw[:-5])
  with pytest.raises(ValueError, match='truncated'):
    data.read_idx(str(tmp_path / 'short'))
  (tmp_path / 'junk').write_bytes(b'PK\x03\x04garbage')
  with pytest.raises(ValueError, match='not an IDX'):
    data.read_idx(str(tmp_path / 'junk'))


def test_system_idx_source_and_imported_precedence(tmp_path, monkeypatch):
  src = write_mnist_dir(str(tmp_path / 'sys'))
  info = data.DatasetInfo('fashion_mnist', 10, (28, 28, 1), 'mnist', 'fashion_mnist', system_dirs=(str(tmp_path / 'sys'),))
  monkeypatch.setitem(data.DATASETS, 'fashion_mnist', info)
  x, y = data.load_split('fashion_mnist', 'test', str(tmp_path / 'dd'))
  assert x.shape == (20, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
  np.testing.assert_array_equal(x[..., 0], src['test'][0])
  np.testing.assert_array_equal(y, src['test'][1])
  # An imported copy in data_dir wins over the system files; num_examples takes the first N.
  data.save_npz(data.imported_path(str(tmp_path / 'dd'), 'fashion_mnist', 'test'), x[:5] // 2, y[:5])
  x2, y2 = data.load_split('fashion_mnist', 'test', str(tmp_path / 'dd'), num_examples=3)
  np.testing.assert_array_equal(x2, x[:3] // 2)


def test_missing_dataset_is_one_fast_clear_line(tmp_path):
  t = time.time()
  with pytest.raises(data.DataUnavailableError) as e:
    data.load_split('cifar10', 'train', str(tmp_path))
  msg = str(e.value)
  assert time.time() - t < 30
  assert '\n' not in msg and "'cifar10'" in msg and str(tmp_path) in msg
  assert 'python -m pixelreg_jax.import_data --dataset=cifar10' in msg


@pytest.mark.skipif(not os.path.isfile('/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz'),
                    reason='Debian dataset-fashion-mnist not installed')
def test_real_fashion_mnist_from_the_debian_package():
  x, y = data._from_system(data.DATASETS['fashion_mnist'], 'test', '')
  assert x.shape == (10000, 28, 28, 1) and sorted(np.unique(y)) == list(range(10))
  assert np.bincount(y).tolist() == [1000] * 10


# ---------------------------------------------------------------- on-device pipeline

def test_model_input_pads_28_to_32_and_scales():
  x = np.random.default_rng(0).integers(1, 256, (3, 28, 28, 1), dtype=np.uint8)
  y = np.asarray(pipe.model_input(jnp.asarray(x), 32, 1))
  assert y.shape == (3, 32, 32, 1) and y.dtype == np.float32
  np.testing.assert_allclose(y[:, 2:30, 2:30], x / 255.0, rtol=1e-6)
  assert np.all(y[:, :2] == 0) and np.all(y[:, 30:] == 0) and np.all(y[:, :, :2] == 0)


def test_model_input_channels_and_resize():
  rgb = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  g = np.asarray(pipe.model_input(jnp.asarray(rgb), 32, 1))
  np.testing.assert_allclose(g[..., 0], rgb.mean(-1) / 255.0, rtol=1e-5)
  gray = rgb[..., :1]
  three = np.asarray(pipe.model_input(jnp.asarray(gray), 32, 3))
  assert three.shape == (2, 32, 32, 3) and np.all(three[..., 0] == three[..., 2])
  big = np.asarray(pipe.model_input(jnp.full((2, 64, 64, 1), 128, jnp.uint8), 32, 1))
  assert big.shape == (2, 32, 32, 1)
  np.testing.assert_allclose(big, 128 / 255.0, rtol=1e-5)


def test_normalize():
  x = jnp.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(np.asarray(pipe.normalize(x, 'cifar')), [-2.5, 0.0, 2.5])
  np.testing.assert_allclose(np.asarray(pipe.normalize(x, 'mnist')), [0.0, 0.5, 1.0])


def test_augment_is_a_reflect_padded_crop_with_optional_flip():
  x = np.random.default_rng(2).uniform(size=(6, 8, 8, 2)).astype(np.float32)
  y = np.asarray(pipe.augment(jnp.asarray(x), jax.random.PRNGKey(0), pad=4))
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode='reflect')
  seen_flip, seen_offsets = False, set()
  for k in range(6):
    matches = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)
               if np.array_equal(y[k], (padded[k, i:i + 8, j:j + 8][:, ::-1] if f else padded[k, i:i + 8, j:j + 8]))]
    assert matches, f'image {k} is no crop of its padded original'
    seen_flip |= any(m[2] for m in matches)
    seen_offsets.add(matches[0][:2])
  assert len(seen_offsets) > 1


def test_epoch_order_is_a_fresh_permutation_each_epoch():
  idx = jnp.arange(100, 150)
  a = np.asarray(pipe.epoch_order(jax.random.PRNGKey(0), idx, 0))
  b = np.asarray(pipe.epoch_order(jax.random.PRNGKey(0), idx, 1))
  assert sorted(a) == list(range(100, 150)) and sorted(b) == sorted(a) and not np.array_equal(a, b)
  np.testing.assert_array_equal(a, np.asarray(pipe.epoch_order(jax.random.PRNGKey(0), idx, 0)))


def test_train_batch_gathers_the_right_images_and_pairs():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(40, dtype=np.int32)
  reg = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
  targets = jnp.asarray(rng.uniform(-1, 1, (10, 10)), jnp.float32)
  d = pipe.TrainData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(reg), targets)
  spec = pipe.PipelineSpec(image_size=32, channels=1, family='mnist', augment=False, batch_size=8, pairs_per_step=3)
  order = jnp.asarray(rng.permutation(40))
  keys = {'augment': jax.random.PRNGKey(1), 'pairs': jax.random.PRNGKey(2)}
  b = pipe.train_batch(d, order, 2, 17, keys, spec)
  want = np.asarray(order[16:24])
  np.testing.assert_array_equal(np.asarray(b['label']), want)
  np.testing.assert_allclose(np.asarray(b['image'])[:, 2:30, 2:30], images[want] / 255.0, rtol=1e-6)
  from pixelreg_jax import similarity
  rows, cols = similarity.pair_indices(keys['pairs'], 17, 3, 10)
  np.testing.assert_allclose(np.asarray(b['reg_a'])[:, 2:30, 2:30], reg[np.asarray(rows)] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(b['target']), np.asarray(targets)[np.asarray(rows), np.asarray(cols)])
