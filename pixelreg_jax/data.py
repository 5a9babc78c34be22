"""Datasets on the host: a registry, the readers, and where each dataset is found.

A split is returned as ``(images uint8 [N, H, W, C], labels int32 [N])`` at its native size;
all preprocessing (grayscale, 28→32, scaling, augmentation) happens on the accelerator in
``input_pipeline``.

Where a dataset is looked for, in order:
  1. ``<data_dir>/imported/<name>/<split>.npz``, written by ``python -m pixelreg_jax.import_data``
     from the official distribution files (works offline and behind firewalls);
  2. the original IDX files of a system package (Debian's ``dataset-fashion-mnist`` installs
     Fashion-MNIST in /usr/share/datasets/fashion-mnist);
  3. TensorFlow Datasets in ``<data_dir>`` (prepared there, or downloaded when allowed).
When none has it, ``DataUnavailableError`` says which dataset, which directory and which
import command. Whatever the source, a split is checked before use (``check_split``): image
shape and dtype, labels in [0, num_classes); damaged files and bad contents raise ``DataError``
naming the file and what to do, never a traceback and never silently wrong data.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zipfile
import zlib
from typing import Callable, Optional

import numpy as np

from pixelreg_jax.errors import DataError, DataUnavailableError

# What reading a damaged file raises: truncated gzip (EOFError), bad gzip/zip (OSError,
# BadZipFile, zlib.error), a bad npy header (ValueError).
READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError, KeyError)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the pipeline needs to know about a dataset.

  Attributes:
    name: registry key, used in configs (``config.dataset``, ``config.reg.dataset``).
    num_classes: label count.
    image_shape: native (H, W, C).
    family: 'mnist' (used as is) or 'cifar' (scaled 5·(x − 0.5), crop+flip augmentation);
      selects normalisation and the evaluation levels of docs/method.md §7.
    tfds_name: the TFDS builder (with config), e.g. 'imagenet_resized/32x32'.
    classification: whether it can be the classified dataset (ImageNet is a reg source only).
    system_dirs: directories where a system package puts the original IDX files.
    splits: the split names it has ('train[:100]'-style slices of them are accepted too).
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  family: str
  tfds_name: str
  classification: bool = True
  system_dirs: tuple[str, ...] = ()
  splits: tuple[str, ...] = ('train', 'test')


_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

DATASETS: dict[str, DatasetInfo] = {
    d.name: d for d in [
        DatasetInfo('mnist', 10, (28, 28, 1), 'mnist', 'mnist',
                    system_dirs=('/usr/share/datasets/mnist',)),
        DatasetInfo('fashion_mnist', 10, (28, 28, 1), 'mnist', 'fashion_mnist',
                    system_dirs=('/usr/share/datasets/fashion-mnist',)),
        DatasetInfo('cifar10', 10, (32, 32, 3), 'cifar', 'cifar10'),
        DatasetInfo('cifar100', 100, (32, 32, 3), 'cifar', 'cifar100'),
        # Imported: train and test (the official val_data); TFDS: train and validation.
        DatasetInfo('imagenet32', 1000, (32, 32, 3), 'cifar', 'imagenet_resized/32x32',
                    classification=False, splits=('train', 'test', 'validation')),
        # Full ImageNet via TFDS with a manual dir, reduced as in the release: grayscale,
        # centre crop to the 144×256 aspect, resize to 36×64 (tfds_source.release_imagenet_crop).
        DatasetInfo('imagenet2012', 1000, (36, 64, 1), 'cifar', 'imagenet2012', classification=False,
                    splits=('train', 'validation', 'test')),
    ]
}


# The normalisation the release's loaders give each dataset's images when they regularize: their
# family's, except ImageNet's, whose transform (crop, flip, resize, grayscale, ToTensor) leaves them
# in [0, 1] ('mnist': as is). config.reg.normalize='source' uses it.
_RELEASE_FAMILY = {'imagenet32': 'mnist', 'imagenet2012': 'mnist'}


def release_family(name: str) -> str:
  """The family whose normalisation the release applies to ``name``'s images (module comment above)."""
  return _RELEASE_FAMILY.get(name, get_info(name).family)


def get_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; choose one of {sorted(DATASETS)}')
  return DATASETS[name]


def input_size(dataset: str, image_size: int = 0) -> int:
  """The network's input size: ``image_size``, or the dataset's own size when 0."""
  return image_size or get_info(dataset).image_shape[0]


def check_split_name(name: str, split: str) -> None:
  """Raises DataError unless ``split`` (or the split a 'train[:N]' slice is of) exists for ``name``."""
  info = get_info(name)
  if split.split('[', 1)[0] not in info.splits:
    raise DataError(f'no such split {split!r} for {name} (splits: {", ".join(info.splits)})')


def check_split(info: DatasetInfo, images: np.ndarray, labels: np.ndarray, where: str, redo: str = '') -> None:
  """Raises DataError unless images are uint8 [N, *info.image_shape] and labels N integers in
  [0, info.num_classes). ``where`` names the file or source in the message, ``redo`` (appended)
  what to do about it."""
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(info.image_shape):
    raise DataError(f'{where}: images have shape {tuple(images.shape[1:])}, expected {tuple(info.image_shape)} '
                    f'for {info.name}{redo}')
  if images.dtype != np.uint8:
    raise DataError(f'{where}: images are {images.dtype}, expected uint8{redo}')
  if labels.ndim != 1 or len(labels) != len(images):
    raise DataError(f'{where}: {len(images)} images but labels of shape {labels.shape}{redo}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{where}: labels are {labels.dtype}, expected integers{redo}')
  if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
    bad = int(np.sum((labels < 0) | (labels >= info.num_classes)))
    raise DataError(f'{where}: {bad} label(s) outside [0, {info.num_classes}) (min {labels.min()}, '
                    f'max {labels.max()}) for {info.name}{redo}')


def default_data_dir() -> str:
  """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, as TFDS itself would choose."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def imported_path(data_dir: str, name: str, split: str) -> str:
  return os.path.join(data_dir or default_data_dir(), 'imported', name, f'{split}.npz')


def import_command(name: str, data_dir: str) -> str:
  return (f'python -m pixelreg_jax.import_data --dataset={name} --source=PATH_TO_OFFICIAL_FILES '
          f'--data_dir={data_dir or default_data_dir()}')


# ---------------------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------------------


def _open_maybe_gz(path: str):
  with open(path, 'rb') as f:
    gz = f.read(2) == b'\x1f\x8b'
  return gzip.open(path, 'rb') if gz else open(path, 'rb')


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (plain or gzip-compressed) of unsigned bytes into a uint8 array.

  Raises:
    DataError: the file is truncated, its gzip stream damaged, or it is no IDX file.
  """
  try:
    with _open_maybe_gz(path) as f:
      header = f.read(4)
      if len(header) != 4 or header[0] != 0 or header[1] != 0:
        raise DataError(f'{path}: not an IDX file')
      if header[2] != 0x08:
        raise DataError(f'{path}: IDX type 0x{header[2]:02x} unsupported (only unsigned bytes)')
      ndim = header[3]
      dims = f.read(4 * ndim)
      if len(dims) != 4 * ndim:
        raise DataError(f'{path}: truncated IDX file (header)')
      shape = struct.unpack('>' + 'I' * ndim, dims)
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: damaged or truncated file ({type(e).__name__}: {e})') from e
  expected = int(np.prod(shape))
  if len(data) != expected:
    raise DataError(f'{path}: truncated IDX file ({len(data)} of {expected} bytes)')
  return np.frombuffer(data, np.uint8).reshape(shape)


def find_idx_pair(directory: str, split: str) -> Optional[tuple[str, str]]:
  """The (images, labels) IDX paths of a split in ``directory`` (``.gz`` or not), if present."""
  paths = []
  for stem in _IDX_FILES[split]:
    found = [os.path.join(directory, stem + ext) for ext in ('.gz', '')
             if os.path.isfile(os.path.join(directory, stem + ext))]
    if not found:
      return None
    paths.append(found[0])
  return paths[0], paths[1]


def read_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DataError(f'{images_path}, {labels_path}: inconsistent IDX shapes {images.shape}, {labels.shape}')
  return images[..., None], labels.astype(np.int32)


def save_npz(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes a split atomically (temporary file, then rename); a failed write (a full disk)
  leaves no temporary file and raises ``OSError`` naming ``path``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  try:
    np.savez(tmp, images=np.asarray(images, np.uint8), labels=np.asarray(labels, np.int32))
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(e.errno, e.strerror or str(e), path) from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a split written by ``save_npz``; DataError if the file is damaged."""
  try:
    with np.load(path) as f:
      return f['images'], f['labels']
  except READ_ERRORS as e:
    raise DataError(f'{path} is damaged or truncated ({type(e).__name__}: {str(e)[:200]}); '
                    'import the dataset again') from e


# ---------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------


def _from_imported(info: DatasetInfo, split: str, data_dir: str):
  path = imported_path(data_dir, info.name, split)
  return load_npz(path) if os.path.isfile(path) else None


def _from_system(info: DatasetInfo, split: str, data_dir: str):
  del data_dir
  for d in info.system_dirs:
    pair = find_idx_pair(d, split) if split in _IDX_FILES else None
    if pair:
      return read_idx_split(*pair)
  return None


def _from_tfds(info: DatasetInfo, split: str, data_dir: str, download: bool = False,
               num_examples: int = 0, manual_dir: str = ''):
  from pixelreg_jax import tfds_source  # Imports TensorFlow: only when actually needed.
  return tfds_source.load(info, split, data_dir or default_data_dir(), download=download,
                          num_examples=num_examples, manual_dir=manual_dir)


SOURCES: list[tuple[str, Callable]] = [
    ('imported', _from_imported),
    ('system', _from_system),
]


def load_split(name: str, split: str, data_dir: str = '', *, download: bool = False,
               num_examples: int = 0, manual_dir: str = '') -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split (or its first ``num_examples``) as uint8 images and int32 labels.

  ``manual_dir`` is TFDS's manual download directory (imagenet2012's tar files).

  Raises:
    DataUnavailableError: with a one-line message naming the dataset, the directory searched
      and the import command.
    DataError: an unknown split, a damaged file, wrong image shapes or labels out of range.
  """
  info = get_info(name)
  check_split_name(name, split)
  for source_name, source in SOURCES:
    out = source(info, split, data_dir)
    if out is not None:
      images, labels = out
      if num_examples:
        images, labels = images[:num_examples], labels[:num_examples]
      if source_name == 'imported':
        check_split(info, images, labels, imported_path(data_dir, name, split),
                    f'; import it again with: {import_command(name, data_dir)}')
      else:
        check_split(info, images, labels, f'{name} ({split}, {source_name} files)')
      return images, labels
  out = _from_tfds(info, split, data_dir, download=download, num_examples=num_examples,
                   manual_dir=manual_dir)
  if out is not None:
    check_split(info, *out, f'{name} ({split}, TFDS {info.tfds_name})')
    return out
  searched = os.path.dirname(imported_path(data_dir, name, split))
  raise DataUnavailableError(
      f'dataset {name!r} ({split}) is not available offline: nothing in {searched} '
      f'nor a prepared TFDS {info.tfds_name!r} in {data_dir or default_data_dir()}'
      + (' (and no network to download it)' if download else ' (downloads are off: --config.download=True)')
      + f'; import it with: {import_command(name, data_dir)}')
