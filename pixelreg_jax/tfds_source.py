"""TensorFlow Datasets as a source of whole splits (host side; TF never touches the hot path).

Small datasets are read once into NumPy arrays and then live on the accelerator, so TF is only
used here, at start-up. TF is kept off any GPU.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
from typing import Optional

import numpy as np
from absl import logging

# Hosts TFDS downloads from; one answering within the timeout means downloads may work.
_PROBE_HOSTS = (('storage.googleapis.com', 443), ('www.cs.toronto.edu', 443))


def network_available(timeout: float = 3.0) -> bool:
  """Whether a TCP connection to a TFDS download host opens within ``timeout`` seconds."""
  for host, port in _PROBE_HOSTS:
    try:
      with socket.create_connection((host, port), timeout=timeout):
        return True
    except OSError:
      continue
  return False


@contextlib.contextmanager
def _silenced_stderr_fd():
  """TF's C++ start-up chatter ignores TF_CPP_MIN_LOG_LEVEL; drop fd 2 while it loads."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _import_tfds():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if 'tensorflow' not in sys.modules:
    with _silenced_stderr_fd():
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


@contextlib.contextmanager
def quiet():
  """TFDS logs a warning for every empty dataset folder it looks at; keep only errors."""
  old = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(old)


def split_spec(split: str, num_examples: int) -> str:
  """'train' + 5000 -> 'train[:5000]' (TFDS slicing reads only that many)."""
  return f'{split}[:{num_examples}]' if num_examples else split


def to_arrays(batches) -> tuple[np.ndarray, np.ndarray]:
  """Numpy batches of {'image', 'label'} -> (uint8 [N,H,W,C], int32 [N])."""
  images, labels = [], []
  for b in batches:
    images.append(np.asarray(b['image'], np.uint8))
    labels.append(np.asarray(b['label'], np.int32) if 'label' in b else np.zeros(len(b['image']), np.int32))
  images = np.concatenate(images)
  if images.ndim == 3:
    images = images[..., None]
  return images, np.concatenate(labels)


def release_imagenet_crop(image, height: int = 36, width: int = 64, crop_height: int = 144,
                          crop_width: int = 256, flip=False):
  """The release's ImageNet reduction of one RGB image (TF ops): uint8 [height, width, 1].

  The release's torchvision transform (``utils.transformFactory``): ``CenterCrop((144, 256))``
  (a 144×256 window of the full-resolution image, zero-padded where the image is smaller;
  offsets rounded as torchvision does), ``RandomHorizontalFlip`` (``flip``, drawn once per image
  by the caller), ``Resize((36, 64))`` (bilinear with antialiasing; PIL's filter, here TF's —
  the one approximation), then ``Grayscale`` (integer luma, as PIL ``convert('L')``).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.convert_to_tensor(image)
  if x.shape.rank == 2:
    x = x[..., None]
  if x.shape[-1] == 1:
    x = tf.repeat(x, 3, axis=-1)
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  # torchvision pads (left/top (d)//2, right/bottom (d+1)//2) when the image is smaller...
  pad_h, pad_w = tf.maximum(crop_height - h, 0), tf.maximum(crop_width - w, 0)
  x = tf.pad(x, [[pad_h // 2, (pad_h + 1) // 2], [pad_w // 2, (pad_w + 1) // 2], [0, 0]])
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  # ...then crops at int(round((h − 144) / 2)) (round half to even, like Python's round).
  top = tf.cast(tf.round(tf.cast(h - crop_height, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(w - crop_width, tf.float64) / 2.0), tf.int32)
  x = x[top:top + crop_height, left:left + crop_width]
  x = tf.cond(tf.convert_to_tensor(flip), lambda: x[:, ::-1], lambda: x)
  x = tf.image.resize(tf.cast(x, tf.float32), (height, width), method='bilinear', antialias=True)
  x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.int32)
  gray = (19595 * x[..., 0] + 38470 * x[..., 1] + 7471 * x[..., 2] + (1 << 15)) // (1 << 16)
  return tf.cast(gray, tf.uint8)[..., None]


def release_flip(index, seed: int = 0):
  """The release's RandomHorizontalFlip of image ``index``: drawn once per image, seeded (TF bool)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])) < 0.5


# Per-example reductions applied in the TF pipeline for datasets whose images vary in size.
PREPROCESS = {'imagenet2012': release_imagenet_crop}


def load(info, split: str, data_dir: str, *, download: bool = False,
         num_examples: int = 0, manual_dir: str = '',
         batch_size: int = 4096) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """The split (or its first ``num_examples``) of ``info`` (a ``data.DatasetInfo``) from TFDS;
  ``None`` if neither prepared nor obtainable now. Preparing uses ``manual_dir`` when given
  (imagenet2012's tar files, no network), else a download when allowed and the network answers. Files are read in order
  (no shuffling), so "the first N" is well defined."""
  tfds = _import_tfds()
  with quiet():
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    prepared = builder.is_prepared()
  if not prepared:
    if manual_dir:
      config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
    elif download and network_available():
      config = None
    else:
      return None
    logging.warning('preparing %s in %s', info.tfds_name, data_dir)
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(download_config=config)
  reduce = PREPROCESS.get(info.name)
  with quiet():
    ds = builder.as_dataset(split=split_spec(split, num_examples), shuffle_files=False)

    def select(index, ex):
      out = {k: ex[k] for k in ('image', 'label') if k in ex}
      if reduce is not None:
        out['image'] = reduce(out['image'], *info.image_shape[:2], flip=release_flip(index))
      return out

    ds = ds.enumerate().map(select).batch(batch_size)
    images, labels = to_arrays(tfds.as_numpy(ds))
  if num_examples:
    images, labels = images[:num_examples], labels[:num_examples]
  return images, labels
