"""The input pipeline on the accelerator: preprocessing, augmentation, batches and pairs.

Small datasets are moved to the device once, as uint8 at their native size. Every batch is
gathered, converted and augmented inside the jitted train step, from keys derived from the
seed and the step, so the pipeline is never the bottleneck and a run is reproducible (and
resumable) from (seed, step) alone.

Image spaces:
  uint8 native [N, H, W, C_src]
    --to_unit-->     float32 [0, 1] [B, H, W, C] at the native size, grayscale by luma: the space
                     the attacks perturb and measure (MNIST family 28×28, as in the release)
    --fit_size-->    the network's input size (``config.image_size``; 0 = native, no change)
    --normalize-->   the network's input values (MNIST: as is; CIFAR: 5·(x − 0.5), docs/method.md §5)
``model_input`` is ``to_unit`` then ``fit_size``.
"""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ITU-R 601-2 luma, as torchvision's Grayscale (PIL ``convert('L')``) computes it on uint8 RGB:
# L = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16, i.e. 0.299 R + 0.587 G + 0.114 B rounded.
LUMA = (0.299, 0.587, 0.114)
_LUMA_FIXED = (19595, 38470, 7471)


def luma(images: Array) -> Array:
  """[..., 3] RGB -> [..., 1] grayscale by luma (torchvision ``Grayscale``, docs/method.md §2).

  uint8 input gives uint8 output rounded exactly as PIL does; float input gives the float
  weighted sum 0.299 R + 0.587 G + 0.114 B.
  """
  if images.dtype == jnp.uint8:
    rgb = images.astype(jnp.int32)
    weighted = sum(w * rgb[..., i] for i, w in enumerate(_LUMA_FIXED)) + (1 << 15)
    return (weighted >> 16).astype(jnp.uint8)[..., None]
  return jnp.tensordot(images, jnp.asarray(LUMA, images.dtype), axes=([-1], [0]))[..., None]


def to_unit(images: Array, channels: int) -> Array:
  """uint8 (or [0, 1] float) [B, H, W(, C_src)] -> float32 [B, H, W, channels] in [0, 1].

  For a 1-channel model an RGB image becomes its luma (``luma``); for a 3-channel model a
  grayscale image is repeated. The size is not changed.
  """
  if images.ndim == 3:
    images = images[..., None]
  if channels == 1 and images.shape[-1] == 3:
    images = luma(images)
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if channels == 3 and x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return x


def fit_size(x: Array, image_size: Optional[int]) -> Array:
  """[B, H, W, C] -> [B, S, S, C], S = ``image_size`` (None or 0: unchanged).

  A smaller image whose margin is even is zero-padded in the centre (e.g. MNIST 28 → 32, an
  option; the release feeds 28×28); any other size change is a bilinear resize.
  """
  h, w = x.shape[1:3]
  if not image_size or (h, w) == (image_size, image_size):
    return x
  dh, dw = image_size - h, image_size - w
  if dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0:
    return jnp.pad(x, ((0, 0), (dh // 2, dh // 2), (dw // 2, dw // 2), (0, 0)))
  return jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[-1]), 'bilinear')


def model_input(images: Array, image_size: Optional[int], channels: int) -> Array:
  """uint8 native images -> float32 [0, 1] at the network's size: ``fit_size(to_unit(·))``."""
  return fit_size(to_unit(images, channels), image_size)


def normalize(x: Array, family: str) -> Array:
  """[0, 1] images -> network input: MNIST-like as is, CIFAR-like 5·(x − 0.5)."""
  if family == 'cifar':
    return 5.0 * (x - 0.5)
  return x


def augment(x: Array, key: Array, pad: int = 4) -> Array:
  """Random crop with ``pad``-pixel reflect padding, then a random horizontal flip.

  Args:
    x: [B, S, S, C] float images.
    key: PRNG key.

  Returns:
    [B, S, S, C], each image cropped and flipped independently.
  """
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (b,))

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)


@flax.struct.dataclass
class TrainData:
  """Everything the train step reads, resident on the device.

  Attributes:
    images: uint8 [N, H, W, C] the classification train split (all of it; indices select).
    labels: int32 [N].
    reg: the regularizer's data (``regularizers.RegData``), or None without a regularizer.
  """
  images: Array
  labels: Array
  reg: Any = None


@flax.struct.dataclass
class PipelineSpec:
  """Static settings of the pipeline (hashable, not traced)."""
  image_size: int = flax.struct.field(pytree_node=False, default=0)    # 0: native size
  channels: int = flax.struct.field(pytree_node=False, default=1)
  family: str = flax.struct.field(pytree_node=False, default='mnist')
  augment: bool = flax.struct.field(pytree_node=False, default=False)
  batch_size: int = flax.struct.field(pytree_node=False, default=64)
  pairs_per_step: int = flax.struct.field(pytree_node=False, default=16)
  reg_keep_size: bool = flax.struct.field(pytree_node=False, default=False)
  reg_family: str = flax.struct.field(pytree_node=False, default='')   # '' = family (config.reg.normalize)


def to_network(x: Array, image_size: Optional[int], family: str) -> Array:
  """[0, 1] images at their native size (the attack space) -> the network's input."""
  return normalize(fit_size(x, image_size), family)


def network_input(images: Array, spec: PipelineSpec, keep_size: bool = False, family: str = '') -> Array:
  """uint8 native images -> the network's input (no augmentation), normalised as ``family``
  ('' = ``spec.family``, the classified dataset's)."""
  return to_network(to_unit(images, spec.channels), None if keep_size else spec.image_size, family or spec.family)


def epoch_order(key: Array, train_indices: Array, epoch: Array) -> Array:
  """The order in which an epoch visits the training images.

  Args:
    key: the seed's shuffle key.
    train_indices: [N_train] indices (into ``TrainData.images``) of the training images.
    epoch: scalar epoch number.

  Returns:
    [N_train] a permutation of ``train_indices``, a fresh one each epoch.
  """
  return train_indices[jax.random.permutation(jax.random.fold_in(key, epoch), train_indices.shape[0])]


def train_batch(data: TrainData, order: Array, step_in_epoch: Array, step: Array, augment_key: Array,
                spec: PipelineSpec) -> dict[str, Array]:
  """The classification batch of one training step, gathered and preprocessed on the device.

  Args:
    data: device-resident data.
    order: [N_train] this epoch's order (``epoch_order``).
    step_in_epoch: scalar, the step's index within the epoch.
    step: scalar, the global step (keys the augmentation).
    augment_key: this seed's augmentation key.
    spec: static settings.

  Returns:
    {'image': [B,S,S,C] network inputs, 'label': [B]}.
  """
  idx = jax.lax.dynamic_slice_in_dim(order, step_in_epoch * spec.batch_size, spec.batch_size)
  x = model_input(data.images[idx], spec.image_size, spec.channels)
  if spec.augment:
    x = augment(x, jax.random.fold_in(augment_key, step))
  return {'image': normalize(x, spec.family), 'label': data.labels[idx]}


def pad_to_batches(batch_size: int, *arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
  """Splits host arrays of N rows into whole batches, zero-padding the last one.

  Args:
    batch_size: B (at most N is used, so a small set is one batch).
    *arrays: [N, ...] each.

  Returns:
    ([nb, B, ...] for each array, mask float32 [nb, B]: 1 for real rows, 0 for padding).
  """
  n = len(arrays[0])
  b = max(1, min(batch_size, n))
  nb = max(1, -(-n // b))
  pad = nb * b - n
  out = [np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]).reshape((nb, b) + a.shape[1:])
         for a in arrays]
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(nb, b)
  return out, mask
