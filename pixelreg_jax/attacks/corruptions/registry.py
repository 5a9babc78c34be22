"""The corruption table, the per-severity parameters of each reference, and applying a corruption to a batch.

``corrupt(key, x [B, H, W, C], name, severity, variant)`` vmaps one corruption over the images, each with
its own draws; ``correct_per_severity`` / ``correct_per_corruption`` count correct predictions per
(corruption, severity) like ``levels.correct_per_level``. Parameter sets and their sources: docs/corruptions.md.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from pixelreg_jax.attacks.corruptions import hendrycks, jpeg, mnist_c
from pixelreg_jax.errors import ConfigError

Array = jax.Array
VARIANTS = ('imagenet_c', 'cifar10_c', 'mnist_c')


@dataclasses.dataclass(frozen=True)
class Corruption:
  """apply(x [H, W, C], draws, params) -> [H, W, C]; draw(key, x, params) -> draws (None: deterministic)."""
  name: str
  apply: Callable[[Array, Any, dict], Array]
  draw: Optional[Callable[[Array, Array, dict], Any]] = None


CORRUPTIONS: dict[str, Corruption] = {name: Corruption(name, apply, draw) for name, apply, draw in
                                      (*hendrycks.ENTRIES, *jpeg.ENTRIES, *mnist_c.ENTRIES)}


def _rows(keys: str, rows: Sequence, **fixed) -> list[dict]:
  names = keys.split()
  return [{**dict(zip(names, r if len(names) > 1 else (r,))), **fixed} for r in rows]


_IMAGENET_ZOOMS = [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)]
_COMMON = {   # shared by imagecorruptions and MNIST-C (MNIST-C copied the ImageNet-C tables)
    'gaussian_noise': _rows('c', [.08, .12, 0.18, 0.26, 0.38]),
    'shot_noise': _rows('c', [60, 25, 12, 5, 3]),
    'impulse_noise': _rows('c', [.03, .06, .09, 0.17, 0.27]),
    'speckle_noise': _rows('c', [.15, .2, 0.35, 0.45, 0.6]),
    'gaussian_blur': _rows('sigma', [1, 2, 3, 4, 6]),
    'defocus_blur': _rows('radius alias_blur', [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]),
    'motion_blur': _rows('radius sigma', [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]),
    'brightness': _rows('c', [.1, .2, .3, .4, .5]),
    'contrast': _rows('c', [0.4, .3, .2, .1, .05]),
    'jpeg_compression': _rows('quality', [25, 18, 15, 10, 7]),
}
_GLASS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]
_FOG = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)]

PARAMS: dict[str, dict[str, list[dict]]] = {
    'imagenet_c': {
        **_COMMON,
        'glass_blur': _rows('sigma delta iterations', _GLASS, swap=False, coin=False),
        'zoom_blur': _rows('zooms', _IMAGENET_ZOOMS, crop='topleft'),
        'fog': _rows('c decay', _FOG, mapsize=None),
        # alpha; σ = 0.01·size; displacement U(±0.005·H); no affine
        'elastic_transform': _rows('alpha', [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],
                                   sigma=0.01, amplitude=0.005, affine=0.0, affine_border=None,
                                   map_border='symmetric', alpha_of_size=False),
        'pixelate': _rows('c', [0.6, 0.5, 0.4, 0.3, 0.25], up='nearest'),
    },
    'cifar10_c': {
        'gaussian_noise': _rows('c', [0.04, 0.06, .08, .09, .10]),
        'shot_noise': _rows('c', [500, 250, 100, 75, 50]),
        'impulse_noise': _rows('c', [.01, .02, .03, .05, .07]),
        'speckle_noise': _rows('c', [.06, .1, .12, .16, .2]),
        'gaussian_blur': _rows('sigma', [.4, .6, 0.7, .8, 1]),
        'glass_blur': _rows('sigma delta iterations', [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                                       (0.4, 1, 2)], swap=False, coin=False),
        'defocus_blur': _rows('radius alias_blur', [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]),
        'motion_blur': _rows('radius sigma', [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]),
        'zoom_blur': _rows('zooms', [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                                     (1, 1.26, 0.01)], crop='center'),
        'fog': _rows('c decay', [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], mapsize=32),
        'brightness': _rows('c', [.05, .1, .15, .2, .3]),
        'contrast': _rows('c', [.75, .5, .4, .3, 0.15]),
        # (α, σ, affine) = IMSIZE·(a, s, f): here fractions of H (IMSIZE = 32), displacement U(±1)
        'elastic_transform': _rows('alpha sigma affine', [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
                                   amplitude=1 / 32, affine_border='reflect101', map_border='symmetric',
                                   alpha_of_size=True),
        'pixelate': _rows('c', [0.95, 0.9, 0.85, 0.75, 0.65], up='box'),
        'jpeg_compression': _rows('quality', [80, 65, 58, 50, 40]),
    },
    'mnist_c': {
        **_COMMON,
        'glass_blur': _rows('sigma delta iterations', _GLASS, swap=True, coin=True),
        'zoom_blur': _rows('zooms', _IMAGENET_ZOOMS, crop='center'),
        'fog': _rows('c decay', _FOG, mapsize=256),
        'elastic_transform': _rows('alpha sigma affine', [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
                                                          (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],
                                   amplitude=1 / 28, affine_border='constant', map_border='constant',
                                   alpha_of_size=True),
        'pixelate': _rows('c', [0.6, 0.5, 0.4, 0.3, 0.25], up='box'),
        'shear': _rows('c', [0.2, 0.4, 0.6, 0.8, 1.]),
        'rotate': _rows('c', [0.2, 0.4, 0.6, 0.8, 1.]),
        'scale': _rows('c', [1 / .9, 1 / .8, 1 / .7, 1 / .6, 1 / .5]),    # the inverse map's scale
        'translate': _rows('c', [1, 2, 3, 4, 5]),
        'spatter': _rows('loc scale sigma threshold sigma2', [(0.65, 0.3, 4, 0.69, 0.6), (0.65, 0.3, 3, 0.68, 0.6),
                                                              (0.65, 0.3, 2, 0.68, 0.5), (0.65, 0.3, 1, 0.65, 1.5),
                                                              (0.67, 0.4, 1, 0.65, 1.5)]),
        'stripe': [{}],
        'dotted_line': [{}],
        'zigzag': [{}],
    },
}

# The severity of each corruption in the published MNIST-C (its functions' defaults).
MNIST_C_SEVERITY = {'shot_noise': 5, 'impulse_noise': 4, 'glass_blur': 1, 'motion_blur': 1, 'shear': 2,
                    'scale': 3, 'rotate': 2, 'brightness': 5, 'translate': 3, 'fog': 5, 'spatter': 4,
                    'stripe': 1, 'dotted_line': 1, 'zigzag': 1}

# The benchmark lists: Hendrycks' 15 without snow and frost; MNIST-C's 15 without canny_edges.
FAMILY_CORRUPTIONS = {
    'cifar': ['gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
              'zoom_blur', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression'],
    'mnist': ['shot_noise', 'impulse_noise', 'glass_blur', 'motion_blur', 'shear', 'scale', 'rotate', 'brightness',
              'translate', 'stripe', 'fog', 'spatter', 'dotted_line', 'zigzag'],
}
FAMILY_VARIANT = {'cifar': 'cifar10_c', 'mnist': 'mnist_c'}


def severities(name: str, variant: str) -> list[int]:
  """The severities 1..S of ``name`` in ``variant`` (S = 5, or 1 for the line corruptions)."""
  return list(range(1, len(_params(name, variant)) + 1))


def _params(name: str, variant: str) -> list[dict]:
  if variant not in PARAMS:
    raise ConfigError(f'unknown corruption variant {variant!r}; choose from {VARIANTS}')
  if name not in PARAMS[variant]:
    raise ConfigError(f'corruption {name!r} has no {variant} parameters; choose from {sorted(PARAMS[variant])}')
  return PARAMS[variant][name]


def corrupt(key: Array, x: Array, name: str, severity: int, variant: str = 'imagenet_c') -> Array:
  """Corruption ``name`` at ``severity`` (1-based, static) of x [B, H, W, C] in [0, 1], vmapped over images.

  Image b uses the draws of fold_in(key, b) (``Corruption.draw``); deterministic corruptions ignore key.
  """
  rows = _params(name, variant)
  if not 1 <= severity <= len(rows):
    raise ConfigError(f'{name} severity {severity} is not in 1..{len(rows)}')
  c, p = CORRUPTIONS[name], rows[severity - 1]
  if c.draw is None:
    return jax.vmap(lambda xi: c.apply(xi, None, p))(x)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
  return jax.vmap(lambda k, xi: c.apply(xi, c.draw(k, xi, p), p))(keys, x)


def corrupt_severities(key: Array, x: Array, name: str, variant: str = 'imagenet_c') -> Array:
  """All severities of ``name``: [S, B, H, W, C]; severity s uses fold_in(key, s)."""
  return jnp.stack([corrupt(jax.random.fold_in(key, s), x, name, s, variant) for s in severities(name, variant)])


def correct_per_severity(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array, name: str,
                         variant: str = 'imagenet_c', mask: Optional[Array] = None,
                         sequential: bool = False) -> Array:
  """Correct predictions under ``name`` at each severity: [S] (the model vmapped over severities).

  Args mirror ``levels.correct_per_level``: x [B, H, W, C] in [0, 1], labels [B], mask [B] (1 real,
  0 padding); key: this batch's key; ``name``, ``variant`` static. ``sequential``: ``lax.map`` the
  model over the severities (S·B images at once otherwise).
  """
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
  xs = corrupt_severities(key, x, name, variant)
  logits = jax.lax.map(logits_fn, xs) if sequential else jax.vmap(logits_fn)(xs)
  pred = jnp.argmax(logits, -1)                                          # [S, B]
  return jnp.sum((pred == labels) * mask, axis=-1)


def corruption_key(key: Array, name: str) -> Array:
  """The key of corruption ``name`` (independent of the other names evaluated)."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def correct_per_corruption(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                           names: Sequence[str], variant: str = 'imagenet_c', mask: Optional[Array] = None,
                           sequential: bool = False) -> dict[str, Array]:
  """{name: [S] correct counts} for each corruption in ``names`` (keys from ``corruption_key``)."""
  return {n: correct_per_severity(logits_fn, corruption_key(key, n), x, labels, n, variant, mask, sequential)
          for n in names}
