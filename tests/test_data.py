"""Host data sources (IDX, imported npz, errors) and the on-device input pipeline."""
import gzip
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax import data, errors
from pixelreg_jax import input_pipeline as pipe


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
  with pytest.raises(errors.DataError, match='truncated'):
    data.read_idx(str(tmp_path / 'short'))
  (tmp_path / 'junk').write_bytes(b'PK\x03\x04garbage')
  with pytest.raises(errors.DataError, match='not an IDX'):
    data.read_idx(str(tmp_path / 'junk'))


def test_system_idx_source_and_imported_precedence(tmp_path, monkeypatch):
  src = write_mnist_dir(str(tmp_path / 'sys'))
  info = data.DatasetInfo('fashion_mnist', 10, (28, 28, 1), 'mnist', 'fashion_mnist',
                          system_dirs=(str(tmp_path / 'sys'),))
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
  with pytest.raises(errors.DataUnavailableError) as e:
    data.load_split('cifar10', 'train', str(tmp_path))
  msg = str(e.value)
  assert time.time() - t < 30
  assert '\n' not in msg and "'cifar10'" in msg and str(tmp_path) in msg
  assert 'python -m pixelreg_jax.import_data --dataset=cifar10' in msg


def test_truncated_or_damaged_gzip_idx_is_a_data_error(tmp_path):
  write_idx(tmp_path / 'a.gz', np.random.default_rng(0).integers(0, 256, (50, 28, 28)), compress=True)
  raw = (tmp_path / 'a.gz').read_bytes()
  (tmp_path / 'cut.gz').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(errors.DataError, match=r'cut.gz: damaged or truncated file \(EOFError'):
    data.read_idx(str(tmp_path / 'cut.gz'))
  bad = bytearray(raw)
  bad[len(bad) // 2] ^= 0xFF                          # a damaged deflate stream or a CRC mismatch
  (tmp_path / 'bad.gz').write_bytes(bytes(bad))
  with pytest.raises(errors.DataError, match='bad.gz: '):
    data.read_idx(str(tmp_path / 'bad.gz'))


def _imported(tmp_path, images, labels, split='train'):
  data.save_npz(data.imported_path(str(tmp_path), 'mnist', split), images, labels)
  return data.imported_path(str(tmp_path), 'mnist', split)


def test_truncated_npz_is_one_line_naming_the_file(tmp_path):
  rng = np.random.default_rng(0)
  path = _imported(tmp_path, rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 40))
  raw = open(path, 'rb').read()
  for cut in (len(raw) // 2, len(raw) - 30):
    open(path, 'wb').write(raw[:cut])
    with pytest.raises(errors.DataError) as e:
      data.load_split('mnist', 'train', str(tmp_path))
    assert '\n' not in str(e.value) and path in str(e.value) and 'import the dataset again' in str(e.value)


@pytest.mark.parametrize('bad', ['label_10', 'label_negative', 'rgb_images', 'small_images', 'float_images',
                                 'short_labels'])
def test_imported_split_contents_are_checked(tmp_path, bad):
  """Out-of-range labels would make a NaN loss later: refused at load, with the file."""
  rng = np.random.default_rng(1)
  x, y = rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 30).astype(np.int32)
  match = {'label_10': r'1 label\(s\) outside \[0, 10\) \(min \d, max 10\)',
           'label_negative': r'1 label\(s\) outside \[0, 10\) \(min -1',
           'rgb_images': r'images have shape \(28, 28, 3\), expected \(28, 28, 1\) for mnist',
           'small_images': r'images have shape \(27, 27, 1\)', 'float_images': 'images are float32, expected uint8',
           'short_labels': '30 images but labels of shape'}[bad]
  if bad == 'label_10':
    y[7] = 10
  elif bad == 'label_negative':
    y[3] = -1
  elif bad == 'rgb_images':
    x = np.repeat(x, 3, -1)
  elif bad == 'small_images':
    x = x[:, :27, :27]
  elif bad == 'short_labels':
    y = y[:20]
  path = data.imported_path(str(tmp_path), 'mnist', 'train')
  os.makedirs(os.path.dirname(path))
  np.savez(path, images=x.astype(np.float32) if bad == 'float_images' else x, labels=y)   # as a foreign tool might
  with pytest.raises(errors.DataError, match=match) as e:
    data.load_split('mnist', 'train', str(tmp_path))
  assert path in str(e.value) and 'import_data --dataset=mnist' in str(e.value)


def test_unknown_split_is_named_with_the_splits_there_are(tmp_path):
  with pytest.raises(errors.DataError, match=r"no such split 'validation' for fashion_mnist \(splits: train, test\)"):
    data.load_split('fashion_mnist', 'validation', str(tmp_path))
  data.check_split_name('imagenet32', 'validation')
  data.check_split_name('mnist', 'train[:100]')
  with pytest.raises(errors.DataError, match='unknown dataset'):
    data.load_split('svhn', 'train', str(tmp_path))


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
  r, gr, b = (rgb[..., i].astype(np.int64) for i in range(3))
  luma = (19595 * r + 38470 * gr + 7471 * b + 2 ** 15) >> 16    # PIL convert('L'), ITU-R 601-2
  np.testing.assert_allclose(g[..., 0], luma / 255.0, rtol=1e-6)
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
  from pixelreg_jax import regularizers, similarity
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(40, dtype=np.int32)
  reg = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
  matrix = rng.uniform(-1, 1, (10, 10)).astype(np.float32)
  reg_data = regularizers.RegData(jnp.asarray(reg), jnp.asarray(matrix))
  d = pipe.TrainData(jnp.asarray(images), jnp.asarray(labels), reg_data)
  spec = pipe.PipelineSpec(image_size=32, channels=1, family='mnist', augment=False, batch_size=8, pairs_per_step=3)
  order = jnp.asarray(rng.permutation(40))
  b = pipe.train_batch(d, order, 2, 17, jax.random.PRNGKey(1), spec)
  want = np.asarray(order[16:24])
  np.testing.assert_array_equal(np.asarray(b['label']), want)
  np.testing.assert_allclose(np.asarray(b['image'])[:, 2:30, 2:30], images[want] / 255.0, rtol=1e-6)
  pairs = regularizers.pair_batch(d.reg, jax.random.PRNGKey(2), 17, 0.5, spec)
  rows, cols = (np.asarray(v) for v in similarity.pair_indices(jax.random.PRNGKey(2), 17, 3, 10))
  np.testing.assert_allclose(np.asarray(pairs['reg_a'])[:, 2:30, 2:30], reg[rows] / 255.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pairs['reg_b'])[:, 2:30, 2:30], reg[cols] / 255.0, rtol=1e-6)
  # Targets: the matrix entries of the pairs, thresholded at Th = 0.5 (eq. 3).
  raw = matrix[rows, cols]
  np.testing.assert_array_equal(np.asarray(pairs['target']), np.where(raw > 0.5, 1.0, np.where(raw < -0.5, -1.0, 0.0)))


@pytest.mark.parametrize('task,source,normalize,scaled', [
    ('cifar10', 'imagenet32', 'task', True), ('cifar10', 'imagenet32', 'source', False),
    ('mnist', 'cifar10', 'task', False), ('mnist', 'cifar10', 'source', True),
    ('cifar10', 'mnist', 'source', False), ('mnist', 'fashion_mnist', 'source', False)])
def test_regularization_images_are_normalised_by_the_task_or_as_the_release_by_their_source(
    task, source, normalize, scaled):
  """config.reg.normalize: 'task' gives the regularization images the classified dataset's
  normalisation (CIFAR: 5·(x − 0.5), MNIST: as is); 'source' their own dataset's, as the release's
  loaders do, ImageNet's transform leaving them in [0, 1]. Checked on the luma images in [0, 1] by hand."""
  from pixelreg_jax import config as config_lib
  from pixelreg_jax import regularizers, similarity, train
  c = config_lib.base_config()
  c.dataset, c.reg.dataset, c.reg.normalize = task, source, normalize
  c.model.channels = 1
  spec = train.pipeline_spec(c)
  shape = data.get_info(source).image_shape
  reg = np.random.default_rng(0).integers(0, 256, (6,) + shape[:2] + (1,), dtype=np.uint8)
  pairs = regularizers.pair_batch(regularizers.RegData(jnp.asarray(reg), jnp.zeros((6, 6))), jax.random.PRNGKey(0),
                                  0, 0.5, spec)
  rows, _ = (np.asarray(v) for v in similarity.pair_indices(jax.random.PRNGKey(0), 0, spec.pairs_per_step, 6))
  unit = np.asarray(pipe.fit_size(jnp.asarray(reg[rows] / 255.0, jnp.float32), spec.image_size))
  np.testing.assert_allclose(np.asarray(pairs['reg_a']), 5 * (unit - 0.5) if scaled else unit, rtol=1e-5, atol=1e-5)


def test_an_unknown_normalisation_is_one_line():
  from pixelreg_jax import config as config_lib
  c = config_lib.base_config()
  c.reg.normalize = 'imagenet'
  with pytest.raises(errors.ConfigError, match=r"config.reg.normalize='imagenet' is unknown; choose one of"):
    config_lib.validate(c)
