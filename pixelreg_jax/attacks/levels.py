"""Level attacks (docs/method.md §7) as pure JAX functions: one strength per call.

All work on images in [0, 1] at the network's input size, [B, H, W, C]. A model is seen only
through ``logits_fn(images) -> [B, classes]`` (normalisation included).

  gaussian     x + σ·N(0, 1), clamped to each image's own [min, max]       (release ``noisy_inputs``)
  uniform      x + ε·U(−1, 1), clamped likewise
  salt_pepper  each element → the image's min or max with probability p     (release: ±1 then clamp)
  fgsm         x + (max − min)·ε·sign(∇ₓ CE of another, unregularized model), clamped to
               [min, max] of the release's whole **batch** of 64 consecutive test images
               (release ``transferredFGSM.py``: ``X.min()``/``X.max()`` of the loader batch)

``evaluate`` vmaps each over its 10 levels. Add an attack: write ``fn(key, x, level, aux) ->
x_adv``, register it in ``LEVEL_ATTACKS`` with its maximum levels in ``MAX_LEVELS``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ---------------------------------------------------------------------------------------
# Levels (docs/method.md §7): linspace(0, max, 10).
# ---------------------------------------------------------------------------------------

MAX_LEVELS = {
    'mnist': {'gaussian': 0.5, 'uniform': 0.5, 'salt_pepper': 0.3, 'fgsm': 0.5},
    'fashion_mnist': {'gaussian': 0.5, 'uniform': 0.5, 'salt_pepper': 0.3, 'fgsm': 0.5},
    'cifar10': {'gaussian': 0.1, 'uniform': 0.1, 'salt_pepper': 0.1, 'fgsm': 0.02},
    'cifar100': {'gaussian': 0.1, 'uniform': 0.1, 'salt_pepper': 0.1, 'fgsm': 0.005},
}


def attack_levels(dataset: str, attack: str, num: int = 10) -> np.ndarray:
  """The ``num`` strengths linspace(0, max) of ``attack`` on ``dataset``."""
  if dataset not in MAX_LEVELS:
    raise ValueError(f'no attack levels for dataset {dataset!r}; add them to attacks.MAX_LEVELS')
  return np.linspace(0.0, MAX_LEVELS[dataset][attack], num).astype(np.float32)


def image_range(x: Array) -> tuple[Array, Array]:
  """Per-image min and max, shaped [B, 1, 1, 1] for broadcasting."""
  axes = tuple(range(1, x.ndim))
  return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)


def clip_to_image_range(x_adv: Array, x: Array) -> Array:
  """Clips each perturbed image to its clean image's own [min, max]."""
  lo, hi = image_range(x)
  return jnp.clip(x_adv, lo, hi)


# ---------------------------------------------------------------------------------------
# Level attacks: fn(key, x [B,S,S,C] in [0,1], level scalar, aux) -> x_adv.
# ---------------------------------------------------------------------------------------


def gaussian_noise(key: Array, x: Array, level: Array, aux: Any = None) -> Array:
  del aux
  return clip_to_image_range(x + level * jax.random.normal(key, x.shape, x.dtype), x)


def uniform_noise(key: Array, x: Array, level: Array, aux: Any = None) -> Array:
  del aux
  return clip_to_image_range(x + level * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0), x)


def salt_and_pepper(key: Array, x: Array, level: Array, aux: Any = None) -> Array:
  """With probability ``level`` an element becomes the image's min or max (equally likely).

  The release adds ±1 to each element (channels independently) with probability p and clamps
  to the image's own range; for images in [0, 1] that is exactly min or max.
  """
  del aux
  k_hit, k_salt = jax.random.split(key)
  hit = jax.random.uniform(k_hit, x.shape) < level
  salt = jax.random.bernoulli(k_salt, 0.5, x.shape)
  lo, hi = image_range(x)
  return jnp.where(hit, jnp.where(salt, hi, lo), x)


@flax.struct.dataclass
class FgsmAux:
  """What transferred FGSM needs besides the images.

  Attributes:
    sign: [B, H, W, C] sign(∇ₓ CE) of the source model at x (``gradient_sign``).
    lo, hi: [B, 1, 1, 1] the range FGSM scales by and clamps to: min and max over the release's
      batch of 64 test images that holds each image (``batch_range``).
  """
  sign: Array
  lo: Array
  hi: Array


def batch_range(x: np.ndarray, group: int = 64, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Min and max of the loader batch each image belongs to, [N, 1, 1, 1] each.

  The release's test loader visits the test set in order in batches of ``group`` (64), and its
  FGSM uses ``X.min()``/``X.max()`` of the whole batch. Image ``i`` of ``x`` is test image
  ``offset + i``, in batch ``(offset + i) // group``; batches cut by the ends of ``x`` use the
  images present.

  Args:
    x: [N, H, W, C] images (any monotone scale of the network input).
    group: the loader's batch size.
    offset: index of ``x[0]`` in the test set.
  """
  x = np.asarray(x)
  batch = (offset + np.arange(len(x))) // group
  flat = x.reshape(len(x), -1)
  lo, hi = np.empty(len(x), flat.dtype), np.empty(len(x), flat.dtype)
  for b in np.unique(batch):
    sel = batch == b
    lo[sel], hi[sel] = flat[sel].min(), flat[sel].max()
  shape = (len(x),) + (1,) * (x.ndim - 1)
  return lo.reshape(shape), hi.reshape(shape)


def fgsm(key: Array, x: Array, level: Array, aux: FgsmAux) -> Array:
  """Transferred FGSM: x + (hi − lo)·ε·sign, clamped to [lo, hi] of the batch (``FgsmAux``)."""
  del key
  return jnp.clip(x + (aux.hi - aux.lo) * level * aux.sign, aux.lo, aux.hi)


def gradient_sign(logits_fn: Callable[[Array], Array], x: Array, labels: Array) -> Array:
  """sign(∇ₓ mean CE(logits_fn(x), labels)): the FGSM direction of a (source) model."""
  def loss(xx):
    logits = logits_fn(xx)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=1))
  return jnp.sign(jax.grad(loss)(x))


@dataclasses.dataclass(frozen=True)
class LevelAttack:
  name: str
  perturb: Callable[[Array, Array, Array, Any], Array]
  needs_source: bool = False   # aux = FgsmAux from the source model's gradient


LEVEL_ATTACKS: dict[str, LevelAttack] = {
    'gaussian': LevelAttack('gaussian', gaussian_noise),
    'uniform': LevelAttack('uniform', uniform_noise),
    'salt_pepper': LevelAttack('salt_pepper', salt_and_pepper),
    'fgsm': LevelAttack('fgsm', fgsm, needs_source=True),
}


def correct_per_level(logits_fn: Callable[[Array], Array], attack: LevelAttack, key: Array, x: Array,
                      labels: Array, levels: Array, aux: Any = None, mask: Optional[Array] = None) -> Array:
  """Correct predictions at each level: [L], vmapped over the levels.

  Args:
    logits_fn: the attacked model.
    attack: a ``LevelAttack``.
    key: PRNG key of this batch (each level gets its own fold).
    x: [B,S,S,C] clean images in [0, 1]; labels [B].
    levels: [L] strengths.
    aux: the attack's extra input (FGSM: ``FgsmAux``).
    mask: [B] weights of real (1) and padding (0) images.
  """
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask

  def one(level, k):
    pred = jnp.argmax(logits_fn(attack.perturb(k, x, level, aux)), -1)
    return jnp.sum((pred == labels) * mask)

  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(levels.shape[0]))
  return jax.vmap(one)(levels, keys)
