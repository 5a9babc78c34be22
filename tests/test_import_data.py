"""import_data: files written in each official format -> import -> the same pixels and labels."""
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
from test_data import write_mnist_dir

from conftest import ROOT, run_env
from pixelreg_jax import data, errors, import_data


def _nchw_rows(images):
  """NHWC uint8 -> the CIFAR/Imagenet32 row layout: 1024 R, then 1024 G, then 1024 B."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _tar(path, files):
  with tarfile.open(path, 'w:gz') as tar:
    for name, blob in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize('compress', [True, False])
def test_idx_import_round_trip(tmp_path, compress):
  src = write_mnist_dir(str(tmp_path / 'src'), compress=compress)
  out = import_data.import_dataset('mnist', str(tmp_path / 'src'), str(tmp_path / 'dd'))
  assert out['splits']['train']['images'] == 50
  for split in ('train', 'test'):
    x, y = data.load_split('mnist', split, str(tmp_path / 'dd'))
    np.testing.assert_array_equal(x[..., 0], src[split][0])
    np.testing.assert_array_equal(y, src[split][1])


def _cifar10_archive(path, rng, protocol=pickle.DEFAULT_PROTOCOL):
  truth, files = {'train': [], 'test': []}, {}
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 4).tolist()
    files[f'cifar-10-batches-py/{name}'] = pickle.dumps({b'data': _nchw_rows(x), b'labels': y, b'batch_label': b'x'},
                                                        protocol=protocol)
    truth['test' if name == 'test_batch' else 'train'].append((x, np.array(y)))
  files['cifar-10-batches-py/batches.meta'] = pickle.dumps({b'label_names': []})
  _tar(path, files)
  return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for k, v in truth.items()}


@pytest.mark.parametrize('protocol', [2, 4, 5])   # the official files are protocol 2 (Python 2's cPickle)
def test_cifar10_import_round_trip(tmp_path, protocol):
  truth = _cifar10_archive(tmp_path / 'cifar-10-python.tar.gz', np.random.default_rng(0), protocol)
  import_data.import_dataset('cifar10', str(tmp_path), str(tmp_path / 'dd'))   # the folder holding it
  for split in ('train', 'test'):
    x, y = data.load_split('cifar10', split, str(tmp_path / 'dd'))
    assert x.shape == ((20 if split == 'train' else 4), 32, 32, 3)
    np.testing.assert_array_equal(x, truth[split][0])
    np.testing.assert_array_equal(y, truth[split][1])


def test_cifar100_import_round_trip_with_fine_labels(tmp_path):
  rng = np.random.default_rng(1)
  truth, files = {}, {}
  for split, n in (('train', 6), ('test', 3)):
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
    files[f'cifar-100-python/{split}'] = pickle.dumps({b'data': _nchw_rows(x), b'fine_labels': fine,
                                                       b'coarse_labels': coarse})
    truth[split] = (x, np.array(fine))
  _tar(tmp_path / 'c100.tar.gz', files)
  import_data.import_dataset('cifar100', str(tmp_path / 'c100.tar.gz'), str(tmp_path / 'dd'))
  for split in ('train', 'test'):
    x, y = data.load_split('cifar100', split, str(tmp_path / 'dd'))
    np.testing.assert_array_equal(x, truth[split][0])
    np.testing.assert_array_equal(y, truth[split][1])


@pytest.mark.parametrize('fmt', ['npz_zip', 'pickle_dir', 'single_npz'])
def test_imagenet32_import_round_trip(tmp_path, fmt):
  rng = np.random.default_rng(2)
  batches = [(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), rng.integers(1, 1001, 5)) for _ in range(3)]
  val = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(1, 1001, 4))

  def npz_bytes(x, y):
    buf = io.BytesIO()
    np.savez(buf, data=_nchw_rows(x), labels=y, mean=np.zeros(3072))
    return buf.getvalue()

  if fmt == 'npz_zip':
    with zipfile.ZipFile(tmp_path / 'Imagenet32_train_npz.zip', 'w') as z:
      for i in (3, 1, 2):   # stored out of order: the import sorts by batch number
        z.writestr(f'Imagenet32_train_npz/train_data_batch_{i}.npz', npz_bytes(*batches[i - 1]))
    with zipfile.ZipFile(tmp_path / 'Imagenet32_val_npz.zip', 'w') as z:
      z.writestr('Imagenet32_val_npz/val_data.npz', npz_bytes(*val))
    source = tmp_path
  elif fmt == 'pickle_dir':
    src = tmp_path / 'Imagenet32_train'
    src.mkdir()
    for i, (x, y) in enumerate(batches, 1):
      (src / f'train_data_batch_{i}').write_bytes(pickle.dumps({'data': _nchw_rows(x), 'labels': y.tolist()}))
    (src / 'val_data').write_bytes(pickle.dumps({'data': _nchw_rows(val[0]), 'labels': val[1].tolist()}))
    source = src
  else:
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]) - 1
    np.savez(tmp_path / 'first.npz', images=x, labels=y)
    source = tmp_path / 'first.npz'

  out = import_data.import_dataset('imagenet32', str(source), str(tmp_path / 'dd'), max_images=12)
  x, y = data.load_split('imagenet32', 'train', str(tmp_path / 'dd'))
  want_x = np.concatenate([b[0] for b in batches])[:12]
  want_y = np.concatenate([b[1] for b in batches])[:12] - 1
  assert out['splits']['train']['images'] == 12
  np.testing.assert_array_equal(x, want_x)
  np.testing.assert_array_equal(y, want_y)
  if fmt != 'single_npz':
    xt, yt = data.load_split('imagenet32', 'test', str(tmp_path / 'dd'))
    np.testing.assert_array_equal(xt, val[0])
    np.testing.assert_array_equal(yt, val[1] - 1)


def test_import_errors_are_clear(tmp_path):
  with pytest.raises(errors.ImportDataError, match='lacks the train IDX files'):
    import_data.import_dataset('mnist', str(tmp_path), str(tmp_path / 'dd'))
  with pytest.raises(errors.ImportDataError, match='does not exist'):
    import_data.import_dataset('cifar10', str(tmp_path / 'nope'), str(tmp_path / 'dd'))
  with pytest.raises(errors.ImportDataError, match='cifar-10-python.tar.gz'):
    import_data.import_dataset('cifar10', str(tmp_path), str(tmp_path / 'dd'))


def test_import_cli_then_training_reads_it(tmp_path):
  write_mnist_dir(str(tmp_path / 'src'), n_train=120, n_test=30)
  env = run_env()
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.import_data', '--dataset=fashion_mnist',
                        f'--source={tmp_path / "src"}', f'--data_dir={tmp_path / "dd"}'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  rec = json.loads(out.stdout.strip().splitlines()[-1])
  assert rec['splits']['train']['images'] == 120 and rec['splits']['test']['images'] == 30
  assert os.path.isfile(data.imported_path(str(tmp_path / 'dd'), 'fashion_mnist', 'train'))


def _import_cli(*args):
  return subprocess.run([sys.executable, '-m', 'pixelreg_jax.import_data', *args], cwd=ROOT, env=run_env(),
                        capture_output=True, text=True, timeout=300)


def _one_error_line(proc):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
  return lines[0]


def test_truncated_gz_is_one_line_and_writes_nothing(tmp_path):
  write_mnist_dir(str(tmp_path / 'src'), n_train=60, n_test=20)
  victim = tmp_path / 'src' / 'train-images-idx3-ubyte.gz'
  raw = victim.read_bytes()
  victim.write_bytes(raw[:len(raw) * 2 // 3])
  out = _import_cli('--dataset=fashion_mnist', f'--source={tmp_path / "src"}', f'--data_dir={tmp_path / "dd"}')
  line = _one_error_line(out)
  assert str(victim) in line and 'damaged or truncated' in line
  assert not (tmp_path / 'dd').exists()


def test_corrupt_cifar_archive_is_one_line(tmp_path):
  _cifar10_archive(tmp_path / 'cifar-10-python.tar.gz', np.random.default_rng(0))
  raw = (tmp_path / 'cifar-10-python.tar.gz').read_bytes()
  (tmp_path / 'cifar-10-python.tar.gz').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(errors.ImportDataError, match='is damaged or not the official cifar10 files'):
    import_data.import_dataset('cifar10', str(tmp_path), str(tmp_path / 'dd'))
  assert not (tmp_path / 'dd').exists()


@pytest.mark.parametrize('bad', ['labels', 'shape'])
def test_source_with_bad_labels_or_shapes_is_refused_before_writing(tmp_path, bad):
  """One split fine, the other bad: nothing is written (the import is all or nothing)."""
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 1000, 6)
  if bad == 'labels':
    y[:2] = 0, 1000                   # 0-based (a 0 is there, so not taken as 1…1000): 1000 is out of range
  else:
    x = x[:, :30]
  np.savez(tmp_path / 'first.npz', images=x, labels=y)
  out = _import_cli('--dataset=imagenet32', f'--source={tmp_path / "first.npz"}', f'--data_dir={tmp_path / "dd"}')
  line = _one_error_line(out)
  assert {'labels': 'label(s) outside [0, 1000)', 'shape': 'images have shape (30, 32, 3)'}[bad] in line
  assert not (tmp_path / 'dd').exists()


def test_missing_required_flag_is_one_line():
  assert '--source is required' in _one_error_line(_import_cli('--dataset=mnist'))


class _RunsACommand:
  """Pickles as a call of os.system: what a crafted 'data_batch_1' would hold."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
  """A cifar-10-python.tar.gz whose data_batch_1 calls os.system when unpickled: the import (a
  real process) stops with one line naming what it refused, and the command never runs."""
  marker = tmp_path / 'the_command_ran'
  _cifar10_archive(tmp_path / 'cifar-10-python.tar.gz', np.random.default_rng(0))
  with tarfile.open(tmp_path / 'cifar-10-python.tar.gz') as tar:
    files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
  files['cifar-10-batches-py/data_batch_1'] = pickle.dumps(
      {b'data': _RunsACommand(f'touch {marker}'), b'labels': [0] * 4})
  _tar(tmp_path / 'cifar-10-python.tar.gz', files)
  assert b'system' in files['cifar-10-batches-py/data_batch_1']
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.import_data', '--dataset=cifar10',
                        f'--source={tmp_path}', f'--data_dir={tmp_path / "dd"}'], cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'system' in lines[0] and 'refused' in lines[0], lines
  assert not marker.exists()
  assert not (tmp_path / 'dd').exists() or not any((tmp_path / 'dd').rglob('*.npz'))


def test_a_negative_max_images_is_one_line(tmp_path):
  """--max_images=-5 imported all but the last 5 images ([:-5])."""
  write_mnist_dir(str(tmp_path / 'src'))
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.import_data', '--dataset=mnist',
                        f'--source={tmp_path / "src"}', f'--data_dir={tmp_path / "dd"}', '--max_images=-5'],
                       cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      'error: flag --max_images=-5: -5 is not a non-negative integer'], out.stderr[-2000:]
  assert not (tmp_path / 'dd').exists()


def _declare_size(zip_path, declared: int):
  """Rewrites the uncompressed size that the zip's central directory declares for its member."""
  raw = bytearray(zip_path.read_bytes())
  at = raw.rfind(b'PK\x01\x02')   # the (only) central directory entry
  raw[at + 24:at + 28] = declared.to_bytes(4, 'little')
  zip_path.write_bytes(bytes(raw))


def test_an_archive_member_declaring_gigabytes_is_refused_unread(tmp_path):
  """A small zip whose member declares 3.75 GiB: one line before anything is read (it was a
  MemoryError traceback)."""
  with zipfile.ZipFile(tmp_path / 'Imagenet32_train_npz.zip', 'w') as z:
    z.writestr('Imagenet32_train_npz/train_data_batch_1.npz', b'x' * 1000)
  _declare_size(tmp_path / 'Imagenet32_train_npz.zip', 0xF0000000)
  with pytest.raises(errors.ImportDataError, match=r'train_data_batch_1.npz declares 4,026,531,840 bytes, more '
                     'than any official file') as e:
    import_data.import_dataset('imagenet32', str(tmp_path), str(tmp_path / 'dd'))
  assert '\n' not in str(e.value) and not (tmp_path / 'dd').exists()


def test_max_images_bounds_what_is_read(tmp_path, monkeypatch):
  """--max_images=5 of batches of 5 images: only the first batch is read from disk."""
  rng = np.random.default_rng(0)
  src = tmp_path / 'src'
  src.mkdir()
  for i in (1, 2):
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    (src / f'train_data_batch_{i}').write_bytes(pickle.dumps({'data': _nchw_rows(x), 'labels': [1] * 5}))
  read, real = [], import_data._read_file
  monkeypatch.setattr(import_data, '_read_file', lambda path: read.append(os.path.basename(path)) or real(path))
  out = import_data.import_dataset('imagenet32', str(src), str(tmp_path / 'dd'), max_images=5)
  assert out['splits']['train']['images'] == 5 and read == ['train_data_batch_1']
  (src / 'train_data_batch_2').write_bytes(b'damaged')
  with pytest.raises(errors.ImportDataError, match='damaged'):
    import_data.import_dataset('imagenet32', str(src), str(tmp_path / 'dd2'), max_images=6)


_IMPORT_ONTO_A_FULL_DISK = textwrap.dedent('''
    import resource, sys
    from pixelreg_jax import cli, import_data
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))   # writes fail with EFBIG
    with cli.one_line_errors():
      import_data.import_dataset('mnist', sys.argv[1], sys.argv[2])
''')


def test_an_import_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
  write_mnist_dir(str(tmp_path / 'src'))
  out = subprocess.run([sys.executable, '-c', _IMPORT_ONTO_A_FULL_DISK, str(tmp_path / 'src'), str(tmp_path / 'dd')],
                       cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith(f'error: {tmp_path / "dd"}/imported/mnist/') and 'File too large' in lines[0]
  assert not [p for p in (tmp_path / 'dd').rglob('*') if p.is_file()]   # no .tmp.npz left behind


_REAL_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


@pytest.mark.skipif(not os.path.isfile(f'{_REAL_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz'),
                    reason='Debian dataset-fashion-mnist not installed')
def test_fashion_mnist_files_imported_as_mnist_are_refused(tmp_path):
  """The real Fashion-MNIST files under --dataset=mnist were imported silently."""
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.import_data', '--dataset=mnist',
                        f'--source={_REAL_FASHION_MNIST}', f'--data_dir={tmp_path / "dd"}'], cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      'error: these are fashion_mnist files, not mnist (exactly 6000 training images per class); '
      'use --dataset=fashion_mnist'], out.stderr[-2000:]
  assert not (tmp_path / 'dd').exists()


def test_idx_releases_are_told_apart_by_their_class_counts():
  """MNIST's published class counts (LeCun et al.) against Fashion-MNIST's 6000/1000 per class."""
  mnist_train = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  mnist_test = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

  def splits(train_counts, test_counts):
    return {split: (None, np.repeat(np.arange(10), counts)) for split, counts in
            (('train', train_counts), ('test', test_counts))}

  mnist, fashion = splits(mnist_train, mnist_test), splits([6000] * 10, [1000] * 10)
  assert import_data.idx_identity('mnist', mnist).startswith('mnist ')
  assert import_data.idx_identity('fashion_mnist', fashion).startswith('fashion_mnist ')
  with pytest.raises(errors.ImportDataError, match='these are mnist files, not fashion_mnist'):
    import_data.idx_identity('fashion_mnist', mnist)
  with pytest.raises(errors.ImportDataError, match='these are fashion_mnist files, not mnist'):
    import_data.idx_identity('mnist', fashion)
  partial = {split: (None, labels[:100]) for split, (_, labels) in mnist.items()}
  assert import_data.idx_identity('fashion_mnist', partial).startswith('not checked')
