r"""Imports a dataset's official distribution files for offline / firewalled use (no network).

    python -m pixelreg_jax.import_data --dataset=fashion_mnist --source=/usr/share/datasets/fashion-mnist
    python -m pixelreg_jax.import_data --dataset=cifar10 --source=~/Downloads/cifar-10-python.tar.gz
    python -m pixelreg_jax.import_data --dataset=cifar100 --source=~/Downloads/cifar-100-python.tar.gz
    python -m pixelreg_jax.import_data --dataset=imagenet32 --source=~/Downloads/Imagenet32_train_npz.zip \
        --max_images=50000

Accepted sources (a file, or a directory holding it):
  mnist, fashion_mnist  the four IDX files (``train-images-idx3-ubyte[.gz]`` …), gzip or not
  cifar10               ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py/``)
  cifar100              ``cifar-100-python.tar.gz`` (or ``cifar-100-python/``); fine labels
  imagenet32            the downsampled ImageNet 32×32 of image-net.org: ``Imagenet32_train_npz.zip``
                        / ``Imagenet32_val_npz.zip`` (or the pickled ``Imagenet32_train.zip``), their
                        extracted ``train_data_batch_*`` / ``val_data`` files, or one ``.npz`` with
                        ``data``/``labels`` (or ``images``/``labels``). Labels are made 0-based.
Writes ``<data_dir>/imported/<dataset>/{train,test}.npz`` (uint8 NHWC images, int32 labels),
which training reads with ``--config.data_dir=<data_dir>``. Image shapes and labels are checked
before anything is written; a truncated or damaged source file, or contents of the wrong shape
or with labels outside [0, num_classes), stop the import with one ``error:`` line (exit status 2).
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import pickle
import tarfile
import zipfile
import zlib
from typing import Callable, Optional

import numpy as np
from absl import flags

from pixelreg_jax import cli
from pixelreg_jax import data as data_lib
from pixelreg_jax.errors import DataError, ImportDataError

Split = tuple[np.ndarray, np.ndarray]

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_string('dataset', None, f'One of {sorted(data_lib.DATASETS)}.', required=True)
  flags.DEFINE_string('source', None, 'The official file(s): an archive or a directory.', required=True)
  flags.DEFINE_string('data_dir', None, 'Destination data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
  flags.DEFINE_integer('max_images', 0, 'Keep only the first N images of each split (0 = all).', lower_bound=0)


# What reading a damaged archive or pickle raises (a truncated .gz: EOFError; bad bytes:
# zlib.error, BadGzipFile (an OSError), tarfile.ReadError, BadZipFile, UnpicklingError).
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile, pickle.UnpicklingError,
                ValueError, KeyError, IndexError, TypeError)


def chw_rows_to_nhwc(rows: np.ndarray, size: int = 32) -> np.ndarray:
  """[N, 3·size·size] rows (R plane, G plane, B plane) -> uint8 [N, size, size, 3]."""
  return np.asarray(rows, np.uint8).reshape(-1, 3, size, size).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------
# MNIST-style IDX.
# ---------------------------------------------------------------------------------------


def import_idx(source: str, max_images: int = 0) -> dict[str, Split]:
  directory = source if os.path.isdir(source) else os.path.dirname(source)
  out = {}
  for split in ('train', 'test'):
    pair = data_lib.find_idx_pair(directory, split)
    if pair is None:
      raise ImportDataError(f'{directory} lacks the {split} IDX files '
                         f'({" and ".join(data_lib._IDX_FILES[split])}, optionally .gz)')
    out[split] = data_lib.read_idx_split(*pair)
  return out


def idx_identity(name: str, splits: dict[str, Split]) -> str:
  """Which release the IDX splits are, told by their class counts: Fashion-MNIST has exactly
  6000 training and 1000 test images of each class; MNIST has not (5421–6742 and 892–1135).
  Both have 60 000 + 10 000 images of 28×28, so nothing else in the files tells them apart.

  Returns:
    What was found, for the import's report.
  Raises:
    ImportDataError: the files are the other dataset's.
  """
  counts = {split: np.bincount(labels, minlength=10) for split, (_, labels) in splits.items()}
  full = {split: len(splits[split][1]) for split in splits} == {'train': 60000, 'test': 10000}
  if not full:
    return 'not checked (only the whole release is told apart from the other one by its class counts)'
  balanced = all(np.all(c == c[0]) for c in counts.values())
  found = 'fashion_mnist' if balanced else 'mnist'
  if name in ('mnist', 'fashion_mnist') and found != name:
    raise ImportDataError(f'these are {found} files, not {name} ('
                          f'{"exactly" if balanced else "not"} 6000 training images per class); '
                          f'use --dataset={found}')
  return f'{found} (60 000 + 10 000 images; class counts {"equal" if balanced else "unequal"}, as in {found})'


# ---------------------------------------------------------------------------------------
# CIFAR (python pickles, in a tar.gz or extracted).
# ---------------------------------------------------------------------------------------


# No official file (a CIFAR batch: 31 MB; an Imagenet32 batch: 394 MB) comes near this: a bigger
# declared size is a damaged or crafted archive, refused before anything is read.
MAX_FILE_BYTES = 2 << 30


def _read_bounded(name: str, size: int, read: Callable[[], bytes]) -> bytes:
  """``read()``, once the file's declared ``size`` is known to be ≤ MAX_FILE_BYTES."""
  if size > MAX_FILE_BYTES:
    raise ImportDataError(f'{name} declares {size:,} bytes, more than any official file ({MAX_FILE_BYTES:,}); '
                          'the archive is damaged or not the official one')
  return read()


def _read_file(path: str) -> bytes:
  with open(path, 'rb') as f:
    return _read_bounded(path, os.fstat(f.fileno()).st_size, f.read)


def _cifar_members(source: str, archive_name: str, folder: str, names: list[str]) -> dict[str, bytes]:
  """The named pickles of a CIFAR distribution, from the archive or its extracted folder."""
  candidates = [source, os.path.join(source, archive_name)]
  for path in candidates:
    if os.path.isfile(path) and tarfile.is_tarfile(path):
      with tarfile.open(path) as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        missing = [n for n in names if n not in members]
        if missing:
          raise ImportDataError(f'{path} lacks {missing}; is it {archive_name}?')
        return {n: _read_bounded(f'{path}:{members[n].name}', members[n].size, tar.extractfile(members[n]).read)
                for n in names}
  for d in (source, os.path.join(source, folder)):
    if all(os.path.isfile(os.path.join(d, n)) for n in names):
      return {n: _read_file(os.path.join(d, n)) for n in names}
  raise ImportDataError(f'{source} is neither {archive_name} nor a folder holding {folder}/{names[0]} …')


# All that the official CIFAR and Imagenet32 pickles reference by name: NumPy arrays, as
# ``ndarray.__reduce__`` writes them (dicts, lists, ints, bytes and str need no lookup).
_PICKLE_GLOBALS = {(m, n) for m in ('numpy.core.multiarray', 'numpy._core.multiarray')
                   for n in ('_reconstruct', 'scalar')}
_PICKLE_GLOBALS |= {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.numeric', '_frombuffer'),
                    ('numpy._core.numeric', '_frombuffer'), ('_codecs', 'encode')}   # protocol 2's bytes, from Python 3


class _DataOnlyUnpickler(pickle.Unpickler):
  """Unpickles data, never code: a pickle may name any callable (``os.system`` …) to be called
  while it loads; only the NumPy array constructors of ``_PICKLE_GLOBALS`` are allowed."""

  def find_class(self, module: str, name: str):
    if (module, name) in _PICKLE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'it names {module}.{name}, which the official files never do (refused unread: '
                                 'a pickle can run code)')


def _unpickle(blob: bytes) -> dict:
  """A pickled dict of the official files, read by ``_DataOnlyUnpickler`` (bytes keys as str)."""
  d = _DataOnlyUnpickler(io.BytesIO(blob), encoding='bytes').load()
  if not isinstance(d, dict):
    raise pickle.UnpicklingError(f'it holds a {type(d).__name__}, not the dict of the official files')
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def import_cifar10(source: str, max_images: int = 0) -> dict[str, Split]:
  train_names = [f'data_batch_{i}' for i in range(1, 6)]
  blobs = _cifar_members(source, 'cifar-10-python.tar.gz', 'cifar-10-batches-py', train_names + ['test_batch'])
  def split(names):
    ds = [_unpickle(blobs[n]) for n in names]
    return (chw_rows_to_nhwc(np.concatenate([d['data'] for d in ds])),
            np.concatenate([np.asarray(d['labels'], np.int32) for d in ds]))
  return {'train': split(train_names), 'test': split(['test_batch'])}


def import_cifar100(source: str, max_images: int = 0) -> dict[str, Split]:
  blobs = _cifar_members(source, 'cifar-100-python.tar.gz', 'cifar-100-python', ['train', 'test'])
  out = {}
  for split in ('train', 'test'):
    d = _unpickle(blobs[split])
    out[split] = chw_rows_to_nhwc(d['data']), np.asarray(d['fine_labels'], np.int32)
  return out


# ---------------------------------------------------------------------------------------
# Downsampled ImageNet 32×32.
# ---------------------------------------------------------------------------------------


def _read_batch(name: str, blob: bytes) -> Split:
  """One Imagenet32 batch file (npz or pickle) -> NHWC images and 0-based labels."""
  if blob[:2] == b'PK':   # .npz (a zip of .npy files)
    with np.load(io.BytesIO(blob)) as f:
      keys = set(f.files)
      images = f['data'] if 'data' in keys else f['images']
      labels = f['labels']
  else:
    d = _unpickle(blob)
    images, labels = d['data'], d['labels']
  labels = np.asarray(labels, np.int64)
  images = np.asarray(images, np.uint8)
  if images.ndim == 2:
    images = chw_rows_to_nhwc(images, int(round((images.shape[1] // 3) ** 0.5)))
  base = os.path.basename(name)
  official = base.startswith(('train_data_batch_', 'val_data'))
  if official or (labels.min() >= 1 and labels.max() == 1000):
    labels = labels - 1   # image-net.org's batches number the classes 1…1000
  return images, labels.astype(np.int32)


def _batch_order(name: str) -> tuple[int, str]:
  base = os.path.basename(name)
  digits = ''.join(ch for ch in base.split('batch_')[-1] if ch.isdigit()) if 'batch_' in base else ''
  return (int(digits) if digits else 0, base)


def _imagenet_files(source: str, stack: contextlib.ExitStack) -> dict[str, list[tuple[str, Callable[[], bytes]]]]:
  """{'train': [(name, read)…], 'test': […]} from zips, folders or a single npz; ``read()``
  reads one file (bounded by MAX_FILE_BYTES) when it is needed. Zips stay open in ``stack``."""
  paths = [source] if os.path.isfile(source) else sorted(glob.glob(os.path.join(source, '*')))
  files: dict[str, list[tuple[str, Callable[[], bytes]]]] = {'train': [], 'test': []}

  def add(name, read):
    base = os.path.basename(name)
    if base.startswith('train_data_batch_'):
      files['train'].append((name, read))
    elif base.startswith('val_data'):
      files['test'].append((name, read))

  for p in paths:
    if p.endswith('.zip') and zipfile.is_zipfile(p):
      z = stack.enter_context(zipfile.ZipFile(p))
      for info in z.infolist():
        if not info.is_dir():
          add(info.filename, lambda i=info, z=z, p=p: _read_bounded(f'{p}:{i.filename}', i.file_size,
                                                                    lambda: z.read(i)))
    elif os.path.isfile(p):
      add(p, lambda p=p: _read_file(p))
  if not files['train'] and os.path.isfile(source) and source.endswith('.npz'):
    files['train'].append((source, lambda: _read_file(source)))
  return files


def import_imagenet32(source: str, max_images: int = 0) -> dict[str, Split]:
  """Reads the batches in order, and only as many as ``max_images`` needs."""
  with contextlib.ExitStack() as stack:
    return _import_imagenet32(_imagenet_files(source, stack), source, max_images)


def _import_imagenet32(files: dict, source: str, max_images: int) -> dict[str, Split]:
  if not files['train'] and not files['test']:
    raise ImportDataError(f'{source} holds no Imagenet32 files (train_data_batch_*, val_data, or one .npz)')
  out = {}
  for split, entries in files.items():
    if not entries:
      continue
    xs, ys, n = [], [], 0
    for name, read in sorted(entries, key=lambda e: _batch_order(e[0])):
      x, y = _read_batch(name, read())
      xs.append(x)
      ys.append(y)
      n += len(x)
      if max_images and n >= max_images:
        break
    out[split] = np.concatenate(xs), np.concatenate(ys)
  return out


IMPORTERS: dict[str, Callable[[str, int], dict[str, Split]]] = {
    'mnist': import_idx,
    'fashion_mnist': import_idx,
    'cifar10': import_cifar10,
    'cifar100': import_cifar100,
    'imagenet32': import_imagenet32,
}


def read_source(name: str, source: str, max_images: int = 0) -> dict[str, Split]:
  """The splits of ``name`` read from ``source``; every read failure as one ImportDataError."""
  try:
    return IMPORTERS[name](source, max_images)
  except (ImportDataError, DataError):
    raise
  except MemoryError as e:
    raise ImportDataError(f'{source}: not enough memory to read the {name} files; '
                          'import fewer images with --max_images') from e
  except _READ_ERRORS as e:
    raise ImportDataError(f'{source} is damaged or not the official {name} files '
                          f'({type(e).__name__}: {cli.one_line(str(e), 200)})') from e


def import_dataset(name: str, source: str, data_dir: Optional[str] = None, max_images: int = 0) -> dict:
  """Reads the official files of ``name`` from ``source``, checks every split (image shape,
  labels in range) and only then writes the imported splits."""
  if name not in IMPORTERS:
    raise ImportDataError(f'no importer for {name!r}; choose one of {sorted(IMPORTERS)}')
  source = os.path.expanduser(source)
  if not os.path.exists(source):
    raise ImportDataError(f'--source={source} does not exist')
  info = data_lib.get_info(name)
  data_dir = data_dir or data_lib.default_data_dir()
  splits = {}
  read = read_source(name, source, max_images)
  identity = idx_identity(name, read) if IMPORTERS[name] is import_idx else None
  for split, (images, labels) in read.items():
    if max_images:
      images, labels = images[:max_images], labels[:max_images]
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
      images = images[..., None]
    data_lib.check_split(info, images, labels, f'{source} ({split})')
    splits[split] = images, labels
  written = {}
  for split, (images, labels) in splits.items():
    path = data_lib.imported_path(data_dir, name, split)
    data_lib.save_npz(path, images, labels)
    written[split] = {'images': int(len(images)), 'path': path}
  out = {'dataset': name, 'data_dir': data_dir, 'splits': written}
  return out if identity is None else {**out, 'identified_as': identity}


def main(argv):
  del argv
  out = import_dataset(FLAGS.dataset, FLAGS.source, FLAGS.data_dir, FLAGS.max_images)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
