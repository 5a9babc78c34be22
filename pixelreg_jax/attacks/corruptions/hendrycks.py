"""Hendrycks & Dietterich's common corruptions (noise, blur, weather, digital) as per-image functions.

``apply(x [H, W, C], draws, p) -> [H, W, C]`` and ``draw(key, x, p) -> draws`` (random ones only); p is
one severity's row of ``registry.PARAMS``. What each reproduces and how it is checked: docs/corruptions.md.
JPEG is in ``jpeg``, the MNIST-C-only corruptions in ``mnist_c``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.attacks.corruptions.ops import (
    affine_warp,
    apply_separable,
    bilinear,
    clip01,
    correlate2d,
    disk_kernel,
    gaussian_filter,
    pil_resize_matrix,
    pixel_grid,
    zoom_matrix,
)

Array = jax.Array

# -- noise ------------------------------------------------------------------------------


def _normal(key, x, p):
  del p
  return jax.random.normal(key, x.shape, x.dtype)


def gaussian_noise(x, z, p):
  return clip01(x + p['c'] * z)


def speckle_noise(x, z, p):
  return clip01(x + x * p['c'] * z)


def _poisson(key, x, p):
  return jax.random.poisson(key, x * p['c'], x.shape).astype(x.dtype)


def shot_noise(x, counts, p):
  """counts ~ Poisson(c·x)."""
  return clip01(counts / p['c'])


def _impulse_draw(key, x, p):
  k1, k2 = jax.random.split(key)
  return jax.random.bernoulli(k1, p['c'], x.shape), jax.random.bernoulli(k2, 0.5, x.shape)


def impulse_noise(x, draws, p):
  """draws = (flipped, salted) booleans [H, W, C] (skimage 's&p', salt_vs_pepper 0.5)."""
  del p
  flipped, salted = draws
  return jnp.where(flipped, salted.astype(x.dtype), x)


# -- blur -------------------------------------------------------------------------------


def gaussian_blur(x, draws, p):
  del draws
  return clip01(gaussian_filter(x, p['sigma']))


def defocus_blur(x, draws, p):
  del draws
  return clip01(correlate2d(x, disk_kernel(p['radius'], p['alias_blur']), 'reflect101'))


def _glass_positions(h: int, w: int, p) -> tuple[np.ndarray, np.ndarray]:
  """The reference's visiting order: for each iteration, h from H−d down to d+1, w likewise."""
  d = p['delta']
  hs, ws = np.meshgrid(np.arange(h - d, d, -1), np.arange(w - d, d, -1), indexing='ij')
  hs = np.tile(hs.ravel(), p['iterations'])
  ws = np.tile(ws.ravel(), p['iterations'])
  return hs, ws


def _glass_draw(key, x, p):
  """Per visited pixel: (dx, dy) uniform integers in [−d, d) and (MNIST-C) the coin 'swap at all'."""
  hs, _ = _glass_positions(x.shape[0], x.shape[1], p)
  k1, k2 = jax.random.split(key)
  offsets = jax.random.randint(k1, (len(hs), 2), -p['delta'], p['delta'])
  coin = jax.random.bernoulli(k2, 0.5, (len(hs),)) if p['coin'] else jnp.ones((len(hs),), bool)
  return offsets, coin


def glass_blur(x, draws, p):
  """draws = (offsets [T, 2] as the reference's (dx, dy), coin [T]) for the T visited pixels."""
  offsets, coin = draws
  hs, ws = _glass_positions(x.shape[0], x.shape[1], p)
  hs, ws = jnp.asarray(hs), jnp.asarray(ws)
  # np.uint8(gaussian(x)·255); +1e-3 keeps exact integers (flat regions) from float32 rounding down
  y = jnp.floor(gaussian_filter(x, p['sigma']) * 255.0 + 1e-3) / 255.0

  def body(t, img):
    h, w = hs[t], ws[t]
    h2 = h + jnp.where(coin[t], offsets[t, 1], 0)
    w2 = w + jnp.where(coin[t], offsets[t, 0], 0)
    a, b = img[h, w], img[h2, w2]
    img = img.at[h, w].set(b)
    return img.at[h2, w2].set(a) if p['swap'] else img

  y = jax.lax.fori_loop(0, len(hs), body, y)
  return clip01(gaussian_filter(y, p['sigma']))


def _motion_draw(key, x, p):
  del x, p
  return jax.random.uniform(key, (), jnp.float32, -45.0, 45.0)


def motion_blur(x, angle, p):
  """angle in degrees; imagecorruptions' _motion_blur with radius r, sigma s."""
  h, w = x.shape[:2]
  width = 2 * p['radius'] + 1
  k = np.exp(-np.arange(width) ** 2 / (2 * p['sigma'] ** 2))
  k = k / k.sum()
  rad = jnp.deg2rad(angle)
  i = jnp.arange(width, dtype=jnp.float32)
  # point = width·(sin, cos), hypot = width: dy = −ceil(i·sin − ½), dx = −ceil(i·cos − ½).
  dy = -jnp.ceil(i * width * jnp.sin(rad) / width - 0.5).astype(jnp.int32)
  dx = -jnp.ceil(i * width * jnp.cos(rad) / width - 0.5).astype(jnp.int32)
  inside = jnp.cumprod((jnp.abs(dy) < h) & (jnp.abs(dx) < w)).astype(x.dtype)   # the reference stops
  rows = jnp.clip(jnp.arange(h)[None, :] - dy[:, None], 0, h - 1)        # [width, H]: edge-replicated shifts
  cols = jnp.clip(jnp.arange(w)[None, :] - dx[:, None], 0, w - 1)        # [width, W]
  shifted = x[rows[:, :, None], cols[:, None, :]]                        # [width, H, W, C]
  return clip01(jnp.tensordot(jnp.asarray(k, x.dtype) * inside, shifted, axes=1))


def zoom_blur(x, draws, p):
  del draws
  h, w = x.shape[:2]
  factors = np.arange(*p['zooms'])
  out = x
  for z in factors:
    out = out + apply_separable(x, zoom_matrix(h, z, p['crop']), zoom_matrix(w, z, p['crop']))
  return clip01(out / (len(factors) + 1))


# -- weather ----------------------------------------------------------------------------


def _fog_size(x, p) -> int:
  if p['mapsize']:
    return p['mapsize']
  side = max(x.shape[:2])
  return 1 if side == 0 else 2 ** (side - 1).bit_length()


def _plasma_shapes(n: int) -> list[int]:
  """Side of the grids drawn at each diamond-square level (step n, n/2, …, 2)."""
  sides, step = [], n
  while step >= 2:
    sides.append(n // step)
    step //= 2
  return sides


def _fog_draw(key, x, p):
  """Uniform(−1, 1) draws of the diamond-square levels: per level (squares, diamonds 1, 2)."""
  sides = _plasma_shapes(_fog_size(x, p))
  u = jax.random.uniform(key, (3 * sum(s * s for s in sides),), jnp.float32, -1.0, 1.0)   # one draw, sliced
  out, start = [], 0
  for s in sides:
    out.append(tuple(u[start + j * s * s:start + (j + 1) * s * s].reshape(s, s) for j in range(3)))
    start += 3 * s * s
  return out


def _interleave(a: Array, b: Array, axis: int) -> Array:
  """Alternates a and b (same shape) along ``axis``: a0 b0 a1 b1 …"""
  shape = list(a.shape)
  shape[axis] *= 2
  return jnp.stack([a, b], axis=axis + 1).reshape(shape)


def plasma_fractal(n: int, wibble_decay: float, draws) -> Array:
  """The references' diamond-square height map [n, n] in [0, 1] (n a power of 2).

  ``draws``: per level, three Uniform(−1, 1) grids; the reference adds wibble·U(−wibble, wibble),
  i.e. wibble²·U(−1, 1), with wibble = 100 divided by ``wibble_decay`` per level. The reference
  fills strided views of the n×n map; here the grid of the points set so far (k×k, step n/k)
  doubles per level: corners, squares (odd, odd), diamonds (even, odd) and (odd, even).
  """
  g = jnp.zeros((1, 1), jnp.float32)
  wibble = 100.0
  for u_sq, u_d1, u_d2 in draws:
    sq = g + jnp.roll(g, -1, axis=0)
    sq = (sq + jnp.roll(sq, -1, axis=1)) / 4 + wibble ** 2 * u_sq
    d1 = (sq + jnp.roll(sq, 1, axis=0) + g + jnp.roll(g, -1, axis=1)) / 4 + wibble ** 2 * u_d1
    d2 = (sq + jnp.roll(sq, 1, axis=1) + g + jnp.roll(g, -1, axis=0)) / 4 + wibble ** 2 * u_d2
    g = _interleave(_interleave(g, d1, 1), _interleave(d2, sq, 1), 0)
    wibble /= wibble_decay
  g = g - g.min()
  return g / g.max()


def fog(x, draws, p):
  h, w = x.shape[:2]
  plasma = plasma_fractal(_fog_size(x, p), p['decay'], draws)[:h, :w, None]
  max_val = x.max()
  return clip01((x + p['c'] * plasma) * max_val / (max_val + p['c']))


# -- digital ----------------------------------------------------------------------------


def brightness(x, draws, p):
  """V += c in HSV; for RGB the HSV round trip scales the pixel by V'/V (V = max channel)."""
  del draws
  if x.shape[-1] == 1:
    return clip01(x + p['c'])
  v = x.max(-1, keepdims=True)
  v2 = jnp.clip(v + p['c'], 0.0, 1.0)
  return clip01(jnp.where(v > 0, x * v2 / jnp.where(v > 0, v, 1.0), v2))


def contrast(x, draws, p):
  del draws
  mean = x.mean(axis=(0, 1), keepdims=True)
  return clip01((x - mean) * p['c'] + mean)


def _elastic_draw(key, x, p):
  """(affine point noise U(−1, 1) [3, 2], displacement fields U(−1, 1) [H, W] for x and y)."""
  k1, k2, k3 = jax.random.split(key, 3)
  h, w = x.shape[:2]
  return (jax.random.uniform(k1, (3, 2), jnp.float32, -1.0, 1.0),
          jax.random.uniform(k2, (h, w), jnp.float32, -1.0, 1.0),
          jax.random.uniform(k3, (h, w), jnp.float32, -1.0, 1.0))


def _affine_from_points(h: int, w: int, noise: Array) -> Array:
  """cv2.getAffineTransform(pts1, pts1 + noise) inverted: [2, 3] map from output to input (x, y).

  pts1 = the references' three points around the centre (H//2, W//2) at ±min(H, W)//3.
  """
  cs = np.array([h // 2, w // 2], np.float64)       # the references' float32(shape)//2, as (x, y)
  ss = min(h, w) // 3
  pts1 = np.array([cs + ss, [cs[0] + ss, cs[1] - ss], cs - ss])
  a_inv = np.linalg.inv(np.concatenate([pts1, np.ones((3, 1))], axis=1))      # [3, 3]
  fwd = (jnp.asarray(a_inv, jnp.float32) @ (jnp.asarray(pts1, jnp.float32) + noise)).T   # [2, 3]: src -> dst
  lin_inv = jnp.linalg.inv(fwd[:, :2])
  return jnp.concatenate([lin_inv, -(lin_inv @ fwd[:, 2])[:, None]], axis=1)


def elastic_transform(x, draws, p):
  """draws = (affine noise [3, 2], ux, uy [H, W]) all U(−1, 1); sizes in p relative to H."""
  noise, ux, uy = draws
  h, w = x.shape[:2]
  if p['affine']:
    x = affine_warp(x, _affine_from_points(h, w, noise * p['affine'] * h), p['affine_border'])
  sigma = (p['sigma'] * h, p['sigma'] * w)
  amp = p['amplitude'] * h
  alpha = p['alpha'] * (h if p['alpha_of_size'] else 1)
  dx = gaussian_filter((ux * amp)[..., None], sigma, 'symmetric', 3.0)[..., 0] * alpha
  dy = gaussian_filter((uy * amp)[..., None], sigma, 'symmetric', 3.0)[..., 0] * alpha
  rows, cols = pixel_grid(h, w)
  return clip01(bilinear(x, rows + dy, cols + dx, p['map_border']))


def pixelate(x, draws, p):
  del draws
  h, w = x.shape[:2]
  hs, ws = int(h * p['c']), int(w * p['c'])
  small = apply_separable(x, pil_resize_matrix(h, hs, 'box'), pil_resize_matrix(w, ws, 'box'))
  return clip01(apply_separable(small, pil_resize_matrix(hs, h, p['up']), pil_resize_matrix(ws, w, p['up'])))


# (name, apply, draw) of this module's corruptions, in ``registry.CORRUPTIONS``'s order; draw None: deterministic.
ENTRIES = (
    ('gaussian_noise', gaussian_noise, _normal),
    ('shot_noise', shot_noise, _poisson),
    ('impulse_noise', impulse_noise, _impulse_draw),
    ('speckle_noise', speckle_noise, _normal),
    ('gaussian_blur', gaussian_blur, None),
    ('defocus_blur', defocus_blur, None),
    ('glass_blur', glass_blur, _glass_draw),
    ('motion_blur', motion_blur, _motion_draw),
    ('zoom_blur', zoom_blur, None),
    ('fog', fog, _fog_draw),
    ('brightness', brightness, None),
    ('contrast', contrast, None),
    ('elastic_transform', elastic_transform, _elastic_draw),
    ('pixelate', pixelate, None),
)
