"""Common corruptions (Hendrycks & Dietterich 2019) and MNIST-C (Mu & Gilmer 2019) in JAX.

Images are float32 [B, H, W, C] in [0, 1] at the network's input size (C = 1 or 3); every
corruption is a per-image function vmapped over the batch, each image with its own random draws,
and the output is clipped to [0, 1] as the references clip. ``corrupt(key, x, name, severity,
variant)`` applies one corruption; ``correct_per_severity`` / ``correct_per_corruption`` count
correct predictions per (corruption, severity) like ``levels.correct_per_level``;
``corruption_errors`` and ``mean_corruption_error`` give Hendrycks' CE_c and mCE.

Suggested record (next to ``attacks`` in robustness.json), accuracies per seed like the attacks':
    'corruptions': {'variant': 'cifar10_c',
                    'accuracy': {name: [[S] per seed]}}      # S = len(severities(name, variant))
and mCE against the unregularized run: ``mean_corruption_error(mean_errors(reg['corruptions']
['accuracy']), mean_errors(base['corruptions']['accuracy']))``.

Parameter sets (``variant``), severities 1..5, from the reference scripts:
  imagenet_c   the ``imagecorruptions`` package (ImageNet-C parameters, any size ≥ 32)
  cifar10_c    Hendrycks' make_cifar_c.py (CIFAR-10-C; the default for the CIFAR family)
  mnist_c      google-research/mnist-c corruptions.py (the default for the MNIST family); the
               published MNIST-C uses one severity per corruption (``MNIST_C_SEVERITY``, the
               defaults of its functions); stripe, dotted_line and zigzag have a single level.

Corruptions (per-image semantics; "x" an image, all maths in [0, 1]):
  gaussian_noise    x + c·N(0, 1)
  shot_noise        Poisson(c·x)/c
  impulse_noise     each element, with probability c, becomes 0 or 1 (equally likely)
                    (skimage ≥ 0.19 ``random_noise(mode='s&p')``; elements, not pixels: channels
                    apart; the skimage of 2019 set exactly ⌈c·size/2⌉ drawn positions to each)
  speckle_noise     x + x·c·N(0, 1)
  gaussian_blur     skimage ``gaussian`` (scipy mode 'nearest', truncate 4) per channel
  defocus_blur      anti-aliased disk kernel (cv2 ``GaussianBlur`` of the aliased disk), cv2
                    ``filter2D`` with BORDER_REFLECT_101
  glass_blur        Gaussian blur, 8-bit truncation, sequential local pixel swaps, Gaussian blur.
                    With H×W×3 arrays (imagecorruptions always converts to 3 channels; CIFAR-10-C
                    is RGB) the reference's tuple "swap" copies: x[h,w] ← x[h',w'] and x[h',w']
                    keeps its value (NumPy views). MNIST-C (2-D arrays) really swaps, and swaps each
                    pixel only with probability ½. Both reproduced (``swap``, ``coin``).
  motion_blur       imagecorruptions' NumPy port of ImageMagick's MotionBlurImage: one-sided
                    Gaussian kernel of width 2r+1 along a random angle U(−45°, 45°), edge-replicated
                    shifts. CIFAR-10-C and MNIST-C call ImageMagick itself (Wand), not available
                    here: their (radius, sigma) go through the same port.
  zoom_blur         mean of x and centre zooms (scipy ``zoom``, order 1) by each factor; the crop
                    of the zoomed image is top-left (imagecorruptions) or centred (CIFAR-10-C,
                    MNIST-C) as in each reference.
  fog               x + c·plasma fractal (diamond-square), rescaled by max/(max + c); map size:
                    next power of 2 ≥ the image (imagecorruptions), 32 (CIFAR-10-C), 256 (MNIST-C)
  brightness        V += c in HSV (gray images: x + c; RGB: x·V'/V, the exact HSV round trip)
  contrast          (x − mean)·c + mean, mean per channel over the image
  elastic_transform imagecorruptions: per-pixel displacement U(±0.005·H), Gaussian-smoothed
                    (σ = 0.01·size, mode 'reflect', truncate 3), × α, bilinear ``map_coordinates``
                    (mode 'reflect'). CIFAR-10-C / MNIST-C: a random affine warp first (cv2
                    ``warpAffine`` of the three points moved by U(±f·H), bilinear, BORDER_REFLECT_101
                    / BORDER_CONSTANT), displacement U(±1) smoothed by their σ, map mode 'reflect' /
                    'constant'; sizes in the tables are fractions of H (the scripts' IMSIZE, 28).
  pixelate          PIL BOX down to int(c·size), then PIL NEAREST (imagecorruptions) or BOX
                    (CIFAR-10-C, MNIST-C) back up (PIL's resampling coefficients, in float)
  jpeg_compression  grayscale baseline JPEG at the reference qualities with libjpeg's integer
                    arithmetic: 8-bit samples, edges replicated to whole 8×8 blocks, the
                    quality-scaled luminance table, the "islow" integer DCT, rounding quantisation,
                    the islow inverse DCT, 8-bit output: bit-exact with PIL/libjpeg-turbo.
                    imagecorruptions' JPEG of a gray image replicated to RGB is exactly this (its
                    Cb = Cr = 128 are flat). Color (C = 3) would need libjpeg's 4:2:0 chroma
                    subsampling and "fancy" upsampling: not implemented (ConfigError).
  MNIST-C only:
  shear, rotate,    skimage ``warp`` of an affine map about the image centre ((W−1)/2, (H−1)/2),
  scale, translate  bilinear, zero outside; random sign (shear, rotate: one; translate: per axis).
                    Shear as the skimage of 2019 that made MNIST-C: [[1, −sin s], [0, cos s]]
                    (skimage ≥ 0.19 builds [[1, −tan s], [0, 1]]).
  stripe            inverts the left and right quarters of the columns (MNIST-C: 7 of 28 each)
  spatter           MNIST-C's mud: Gaussian-blurred N(loc, scale) field thresholded, blurred again,
                    kept where ≥ 0.8: x·(1 − m) + (63/255)·m
  dotted_line       a line of log-decaying width between random rows of the first and last column,
                    every other pair of columns removed
  zigzag            MNIST-C's zigzag of line segments (the reference's endpoint formula included)

Not implemented: snow and frost (ImageMagick motion blur of a PNG layer / bundled frost photos),
ImageNet-C's water spatter (Canny, distance transform and histogram equalisation in cv2),
saturate (no effect on gray images), MNIST-C canny_edges (skimage Canny's 8-connected hysteresis
needs connected components; not a small faithful JAX function), MNIST-C's pessimal_noise (needs
its trained noise matrix file), quantize/inverse/line (not in the MNIST-C benchmark).

Adaptations to the references' input: they take uint8 [0, 255] (imagecorruptions: H×W×3 with
H, W ≥ 32; gray images are replicated to 3 channels) and return uint8 by truncation; here float
[0, 1] images of any size (28×28 included) go in and float comes out, without the final
truncation to 8 bits (glass_blur keeps its internal 8-bit truncation, JPEG its 8-bit samples).
Size-dependent constants of the references (CIFAR-10-C's 32, MNIST-C's 28 and 13.5) are
expressed through H and W. Corruptions run at the network's input resolution and channels (for
CIFAR in grayscale by default), not on the original RGB images as CIFAR-10-C does.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.errors import ConfigError

Array = jax.Array
VARIANTS = ('imagenet_c', 'cifar10_c', 'mnist_c')

# ---------------------------------------------------------------------------------------
# Static (trace-time, NumPy) helpers: border folding and linear operators as matrices.
# ---------------------------------------------------------------------------------------


def _fold(idx, n: int, mode: str, xp=np):
  """Source index of (possibly out-of-range) integer ``idx`` in a length-``n`` axis, or −1 (constant).

  Modes: 'edge' (scipy 'nearest'), 'reflect101' (cv2 BORDER_REFLECT_101, scipy 'mirror'),
  'symmetric' (scipy 'reflect': d c b a | a b c d), 'constant'. ``xp``: np or jnp.
  """
  if mode == 'edge':
    return xp.clip(idx, 0, n - 1)
  if mode == 'reflect101':
    if n == 1:
      return idx * 0
    i = xp.mod(idx, 2 * (n - 1))
    return xp.where(i > n - 1, 2 * (n - 1) - i, i)
  if mode == 'symmetric':
    i = xp.mod(idx, 2 * n)
    return xp.where(i >= n, 2 * n - 1 - i, i)
  if mode == 'constant':
    return xp.where((idx >= 0) & (idx < n), idx, -1)
  raise ValueError(f'unknown border mode {mode!r}')


def _correlation_matrix(n: int, weights: np.ndarray, mode: str) -> np.ndarray:
  """[n, n] matrix of the 1-D correlation with centred odd ``weights`` and border ``mode``."""
  r = len(weights) // 2
  m = np.zeros((n, n), np.float64)
  rows = np.arange(n)
  for k, w in zip(range(-r, r + 1), weights):
    src = _fold(rows + k, n, mode)
    ok = src >= 0
    np.add.at(m, (rows[ok], src[ok]), w)
  return m


def _gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
  """scipy ``gaussian_filter1d`` weights: radius int(truncate·σ + 0.5); [1] for σ = 0."""
  if sigma <= 1e-15:
    return np.ones(1)
  r = int(truncate * sigma + 0.5)
  t = np.arange(-r, r + 1)
  w = np.exp(-0.5 * t ** 2 / sigma ** 2)
  return w / w.sum()


def _gaussian_matrix(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
  return _correlation_matrix(n, _gaussian_taps(sigma, truncate), mode)


def _apply_separable(x: Array, mh: np.ndarray, mw: np.ndarray) -> Array:
  """Applies [H', H] on rows and [W', W] on columns of x [H, W, C]."""
  y = jnp.einsum('ij,jkc->ikc', jnp.asarray(mh, x.dtype), x)
  return jnp.einsum('kl,ilc->ikc', jnp.asarray(mw, x.dtype), y)


def gaussian_filter(x: Array, sigma, mode: str = 'edge', truncate: float = 4.0) -> Array:
  """skimage/scipy Gaussian filter of x [H, W, C] over H and W (σ scalar or (σ_h, σ_w))."""
  sh, sw = (sigma, sigma) if np.isscalar(sigma) else sigma
  return _apply_separable(x, _gaussian_matrix(x.shape[0], sh, mode, truncate),
                          _gaussian_matrix(x.shape[1], sw, mode, truncate))


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
  """cv2.getGaussianKernel for σ > 0."""
  t = np.arange(ksize) - (ksize - 1) / 2
  w = np.exp(-t ** 2 / (2 * sigma ** 2))
  return w / w.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """The references' anti-aliased disk: the aliased disk on [−8, 8]² (or [−r, r]² for r > 8),
  normalised, then cv2.GaussianBlur (3×3, or 5×5 for r > 8; σ = alias_blur; BORDER_REFLECT_101)."""
  if radius <= 8:
    grid, ksize = np.arange(-8, 9), 3
  else:
    grid, ksize = np.arange(-radius, radius + 1), 5
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  m = _correlation_matrix(len(grid), _cv2_gaussian_kernel(ksize, alias_blur), 'reflect101')
  return m @ disk @ m.T


def zoom_matrix(n: int, zoom: float, crop: str) -> np.ndarray:
  """[n, n] operator of the references' ``clipped_zoom`` along one axis.

  Crop the centre ceil(n/zoom) samples (from (n − ch)//2), zoom them with scipy
  ``ndimage.zoom(order=1)`` to round(ch·zoom) samples (output i ← input i·(ch − 1)/(out − 1)),
  keep n samples: the first (``crop='topleft'``, imagecorruptions) or from (out − n)//2
  (``crop='center'``, CIFAR-10-C and MNIST-C).
  """
  ch = int(np.ceil(n / float(zoom)))
  top = (n - ch) // 2
  out = int(round(ch * zoom))
  trim = 0 if crop == 'topleft' else (out - n) // 2
  m = np.zeros((n, n), np.float64)
  step = (ch - 1) / (out - 1) if out > 1 else 0.0
  for i in range(n):
    u = (i + trim) * step
    lo = min(int(np.floor(u)), ch - 1)
    f = u - lo
    m[i, top + lo] += 1 - f
    if f > 0:
      m[i, top + min(lo + 1, ch - 1)] += f
  return m


def pil_resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
  """[n_out, n_in] operator of PIL's ``resize`` along one axis ('box' or 'nearest').

  BOX: PIL's precompute_coeffs — scale = n_in/n_out, support 0.5·max(scale, 1), input samples
  xmin = int(center − support + 0.5) .. int(center + support + 0.5) around center = (i + 0.5)·scale,
  weight box((j − center + 0.5)/max(scale, 1)) with box(t) = 1 on (−½, ½], normalised.
  NEAREST: sample int((i + 0.5)·scale).
  """
  scale = n_in / n_out
  m = np.zeros((n_out, n_in), np.float64)
  if method == 'nearest':
    m[np.arange(n_out), np.minimum(((np.arange(n_out) + 0.5) * scale).astype(int), n_in - 1)] = 1.0
    return m
  fscale = max(scale, 1.0)
  support = 0.5 * fscale
  for i in range(n_out):
    center = (i + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), n_in)
    for j in range(xmin, xmax):
      t = (j - center + 0.5) / fscale
      m[i, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
    if m[i].sum():
      m[i] /= m[i].sum()
  return m


# ---------------------------------------------------------------------------------------
# Traced helpers.
# ---------------------------------------------------------------------------------------


def _gather(x: Array, rows: Array, cols: Array, mode: str) -> Array:
  """x [H, W, C] at integer rows/cols [h, w] (any range) with border ``mode`` ('constant': 0)."""
  h, w = x.shape[:2]
  r, c = _fold(rows, h, mode, jnp), _fold(cols, w, mode, jnp)
  v = x[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
  if mode == 'constant':
    v = v * ((r >= 0) & (c >= 0))[..., None].astype(x.dtype)
  return v


def bilinear(x: Array, rows: Array, cols: Array, mode: str) -> Array:
  """x [H, W, C] sampled bilinearly at float coordinates rows/cols [h, w] -> [h, w, C].

  Modes: 'symmetric', 'reflect101', 'edge', 'grid-constant' (neighbours outside are 0: skimage
  ``warp``, cv2 BORDER_CONSTANT), 'constant' (scipy ``map_coordinates``: 0 for a coordinate
  outside [0, n − 1], no interpolation with the outside).
  """
  h, w = x.shape[:2]
  r0, c0 = jnp.floor(rows), jnp.floor(cols)
  fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  tap_mode = {'grid-constant': 'constant', 'constant': 'edge'}.get(mode, mode)

  def tap(dr, dc):
    return _gather(x, r0 + dr, c0 + dc, tap_mode)

  out = ((1 - fr) * (1 - fc) * tap(0, 0) + (1 - fr) * fc * tap(0, 1) + fr * (1 - fc) * tap(1, 0)
         + fr * fc * tap(1, 1))
  if mode == 'constant':
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    out = out * inside[..., None].astype(x.dtype)
  return out


def _pad(x: Array, rh: int, rw: int, mode: str) -> Array:
  """x [H, W, C] padded by rh rows and rw columns on each side with border ``mode``."""
  h, w = x.shape[:2]
  rows = np.arange(-rh, h + rh)[:, None] + np.zeros((1, w + 2 * rw), int)
  cols = np.arange(-rw, w + rw)[None, :] + np.zeros((h + 2 * rh, 1), int)
  return _gather(x, jnp.asarray(rows), jnp.asarray(cols), mode)


def correlate2d(x: Array, kernel: np.ndarray, mode: str) -> Array:
  """cv2 ``filter2D`` of x [H, W, C] (correlation, centred anchor, border ``mode``) per channel."""
  kh, kw = kernel.shape
  xp = _pad(x, kh // 2, kw // 2, mode)                               # [H+kh−1, W+kw−1, C]
  lhs = jnp.transpose(xp, (2, 0, 1))[:, None]                      # [C, 1, Hp, Wp]
  rhs = jnp.asarray(kernel, x.dtype)[None, None]
  out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), 'VALID', precision=jax.lax.Precision.HIGHEST)
  return jnp.transpose(out[:, 0], (1, 2, 0))


def _coords(h: int, w: int) -> tuple[Array, Array]:
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  return rows, cols


def affine_warp(x: Array, matrix: Array, mode: str) -> Array:
  """Output (row, col) ← x bilinearly at the input point ``matrix``·(col, row, 1) (a [2, 3] map in (x, y)).

  With the inverse map of M and mode 'reflect101' / 'grid-constant' this is cv2
  ``warpAffine(x, M, borderMode=BORDER_REFLECT_101 / BORDER_CONSTANT)`` of float images.
  """
  rows, cols = _coords(*x.shape[:2])
  src_c = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
  src_r = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
  return bilinear(x, src_r, src_c, mode)


def _about_center(a: Array, h: int, w: int) -> Array:
  """[2, 3] affine map with linear part ``a`` [2, 2] that keeps ((W − 1)/2, (H − 1)/2) fixed."""
  c = jnp.asarray([(w - 1) / 2, (h - 1) / 2], jnp.float32)
  return jnp.concatenate([a, (c - a @ c)[:, None]], axis=1)


# ---------------------------------------------------------------------------------------
# Corruptions: apply(x [H, W, C], draws, p) -> [H, W, C]; draw(key, x, p) -> draws.
# ---------------------------------------------------------------------------------------


def _clip(x):
  return jnp.clip(x, 0.0, 1.0)


def _normal(key, x, p):
  del p
  return jax.random.normal(key, x.shape, x.dtype)


def gaussian_noise(x, z, p):
  return _clip(x + p['c'] * z)


def speckle_noise(x, z, p):
  return _clip(x + x * p['c'] * z)


def _poisson(key, x, p):
  return jax.random.poisson(key, x * p['c'], x.shape).astype(x.dtype)


def shot_noise(x, counts, p):
  """counts ~ Poisson(c·x)."""
  return _clip(counts / p['c'])


def _impulse_draw(key, x, p):
  k1, k2 = jax.random.split(key)
  return jax.random.bernoulli(k1, p['c'], x.shape), jax.random.bernoulli(k2, 0.5, x.shape)


def impulse_noise(x, draws, p):
  """draws = (flipped, salted) booleans [H, W, C] (skimage 's&p', salt_vs_pepper 0.5)."""
  del p
  flipped, salted = draws
  return jnp.where(flipped, salted.astype(x.dtype), x)


def gaussian_blur(x, draws, p):
  del draws
  return _clip(gaussian_filter(x, p['sigma']))


def defocus_blur(x, draws, p):
  del draws
  return _clip(correlate2d(x, disk_kernel(p['radius'], p['alias_blur']), 'reflect101'))


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
  return _clip(gaussian_filter(y, p['sigma']))


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
  return _clip(jnp.tensordot(jnp.asarray(k, x.dtype) * inside, shifted, axes=1))


def zoom_blur(x, draws, p):
  del draws
  h, w = x.shape[:2]
  factors = np.arange(*p['zooms'])
  out = x
  for z in factors:
    out = out + _apply_separable(x, zoom_matrix(h, z, p['crop']), zoom_matrix(w, z, p['crop']))
  return _clip(out / (len(factors) + 1))


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
  return _clip((x + p['c'] * plasma) * max_val / (max_val + p['c']))


def brightness(x, draws, p):
  """V += c in HSV; for RGB the HSV round trip scales the pixel by V'/V (V = max channel)."""
  del draws
  if x.shape[-1] == 1:
    return _clip(x + p['c'])
  v = x.max(-1, keepdims=True)
  v2 = jnp.clip(v + p['c'], 0.0, 1.0)
  return _clip(jnp.where(v > 0, x * v2 / jnp.where(v > 0, v, 1.0), v2))


def contrast(x, draws, p):
  del draws
  mean = x.mean(axis=(0, 1), keepdims=True)
  return _clip((x - mean) * p['c'] + mean)


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
  rows, cols = _coords(h, w)
  return _clip(bilinear(x, rows + dy, cols + dx, p['map_border']))


def pixelate(x, draws, p):
  del draws
  h, w = x.shape[:2]
  hs, ws = int(h * p['c']), int(w * p['c'])
  small = _apply_separable(x, pil_resize_matrix(h, hs, 'box'), pil_resize_matrix(w, ws, 'box'))
  return _clip(_apply_separable(small, pil_resize_matrix(hs, h, p['up']), pil_resize_matrix(ws, w, p['up'])))


_JPEG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64).reshape(8, 8)


def jpeg_quant_table(quality: int) -> np.ndarray:
  """libjpeg's luminance table at ``quality`` (jpeg_quality_scaling, baseline: clamped to [1, 255])."""
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality      # integers, as libjpeg
  return np.clip(np.floor((_JPEG_LUMINANCE * scale + 50) / 100), 1, 255)


# libjpeg's "islow" integer DCTs (jfdctint.c, jidctint.c; libjpeg-turbo's default, SIMD bit-exact):
# 13-bit fixed-point constants sqrt(2)·cos combinations, PASS1_BITS = 2 extra bits between passes.
_FIX = {'0_298631336': 2446, '0_390180644': 3196, '0_541196100': 4433, '0_765366865': 6270,
        '0_899976223': 7373, '1_175875602': 9633, '1_501321110': 12299, '1_847759065': 15137,
        '1_961570560': 16069, '2_053119869': 16819, '2_562915447': 20995, '3_072711026': 25172}
_CONST_BITS, _PASS1_BITS = 13, 2


def _descale(v: Array, n: int) -> Array:
  return jnp.right_shift(v + (1 << (n - 1)), n)


def _odd_part(t0, t1, t2, t3):
  """The shared odd-part rotation of jfdctint/jidctint (LL&M figure 8): returns (t0, t1, t2, t3) updated."""
  f = _FIX
  z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
  z5 = (z3 + z4) * f['1_175875602']
  t0, t1 = t0 * f['0_298631336'], t1 * f['2_053119869']
  t2, t3 = t2 * f['3_072711026'], t3 * f['1_501321110']
  z1, z2 = z1 * -f['0_899976223'], z2 * -f['2_562915447']
  z3, z4 = z3 * -f['1_961570560'] + z5, z4 * -f['0_390180644'] + z5
  return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def _fdct_pass(d: Array, first: bool) -> Array:
  """One pass of jpeg_fdct_islow along the last axis of int32 d [..., 8]."""
  x = [d[..., i] for i in range(8)]
  t0, t7, t1, t6 = x[0] + x[7], x[0] - x[7], x[1] + x[6], x[1] - x[6]
  t2, t5, t3, t4 = x[2] + x[5], x[2] - x[5], x[3] + x[4], x[3] - x[4]
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  n = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
  out = [None] * 8
  if first:
    out[0], out[4] = jnp.left_shift(t10 + t11, _PASS1_BITS), jnp.left_shift(t10 - t11, _PASS1_BITS)
  else:
    out[0], out[4] = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
  z1 = (t12 + t13) * _FIX['0_541196100']
  out[2] = _descale(z1 + t13 * _FIX['0_765366865'], n)
  out[6] = _descale(z1 + t12 * -_FIX['1_847759065'], n)
  o7, o5, o3, o1 = _odd_part(t4, t5, t6, t7)
  out[7], out[5], out[3], out[1] = (_descale(v, n) for v in (o7, o5, o3, o1))
  return jnp.stack(out, -1)


def _idct_pass(d: Array, first: bool) -> Array:
  """One pass of jpeg_idct_islow along the last axis of int32 d [..., 8] (first: the column pass)."""
  x = [d[..., i] for i in range(8)]
  z1 = (x[2] + x[6]) * _FIX['0_541196100']
  t2, t3 = z1 + x[6] * -_FIX['1_847759065'], z1 + x[2] * _FIX['0_765366865']
  t0, t1 = jnp.left_shift(x[0] + x[4], _CONST_BITS), jnp.left_shift(x[0] - x[4], _CONST_BITS)
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  o0, o1, o2, o3 = _odd_part(x[7], x[5], x[3], x[1])
  n = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
  out = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
  return jnp.stack([_descale(v, n) for v in out], -1)


def jpeg_compression(x, draws, p):
  """Grayscale baseline JPEG round trip at quality p['quality'] with libjpeg's integer arithmetic.

  8-bit samples (round(255·x)), edges replicated to whole 8×8 blocks, sample − 128, islow forward
  DCT (output scaled by 8), quantisation round(|F|/(8Q)) half up with the sign kept, dequantisation,
  islow inverse DCT, + 128 clamped to [0, 255].
  """
  del draws
  if x.shape[-1] != 1:
    raise ConfigError('jpeg_compression is implemented for 1-channel images only (libjpeg subsamples '
                      'color); use model.channels=1 or leave jpeg_compression out')
  h, w = x.shape[:2]
  hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
  samples = jnp.round(jnp.clip(x[..., 0], 0, 1) * 255.0).astype(jnp.int32)
  samples = jnp.pad(samples, ((0, hp - h), (0, wp - w)), mode='edge') - 128
  blocks = samples.reshape(hp // 8, 8, wp // 8, 8).transpose(0, 2, 1, 3)      # [bh, bw, row, col]
  coef = _fdct_pass(blocks, True)                                           # rows
  coef = jnp.swapaxes(_fdct_pass(jnp.swapaxes(coef, -1, -2), False), -1, -2)  # columns
  q = jnp.asarray(jpeg_quant_table(p['quality']), jnp.int32)
  level = jnp.sign(coef) * ((jnp.abs(coef) + 4 * q) // (8 * q))
  deq = level * q
  rec = jnp.swapaxes(_idct_pass(jnp.swapaxes(deq, -1, -2), True), -1, -2)  # columns
  rec = _idct_pass(rec, False)                                              # rows
  rec = rec.transpose(0, 2, 1, 3).reshape(hp, wp)[:h, :w]
  return (jnp.clip(rec + 128, 0, 255).astype(x.dtype) / 255.0)[..., None]


def _random_sign(key, shape=()):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


def _affine_draw(key, x, p):
  del x, p
  return _random_sign(key, (2,))


def _warp_about_center(x, a):
  """skimage ``warp(x, inverse_map=aff)`` with aff keeping the centre fixed; bilinear, 0 outside."""
  return _clip(affine_warp(x, _about_center(a, *x.shape[:2]), 'grid-constant'))


def shear(x, signs, p):
  s = p['c'] * signs[0]
  return _warp_about_center(x, jnp.stack([jnp.stack([1.0, -jnp.sin(s)]), jnp.stack([0.0, jnp.cos(s)])]))


def rotate(x, signs, p):
  t = p['c'] * signs[0]
  return _warp_about_center(x, jnp.stack([jnp.stack([jnp.cos(t), -jnp.sin(t)]), jnp.stack([jnp.sin(t), jnp.cos(t)])]))


def scale(x, draws, p):
  del draws
  return _warp_about_center(x, jnp.eye(2, dtype=jnp.float32) * p['c'])


def translate(x, signs, p):
  """Output(col, row) = x(col + dx, row + dy) with (dx, dy) = c·signs."""
  m = jnp.concatenate([jnp.eye(2, dtype=jnp.float32), (p['c'] * signs)[:, None]], axis=1)
  return _clip(affine_warp(x, m, 'grid-constant'))


def stripe(x, draws, p):
  del draws, p
  w = x.shape[1]
  k = round(w / 4)
  cols = np.arange(w)
  outer = jnp.asarray((cols < k) | (cols >= w - k))[None, :, None]
  return jnp.where(outer, 1.0 - x, x)


def line_from_points(h: int, w: int, c0, r0, c1, r1) -> Array:
  """MNIST-C's line [H, W]: log(1 − d/2.3) + 1 of the row distance d to the line through
  (c0, r0), (c1, r1), clipped to [0, 1], only in columns floor(c0) ≤ col < ceil(c1); 0 if c1 = c0."""
  rows, cols = _coords(h, w)
  slope = (r1 - r0) / jnp.where(c1 == c0, 1.0, c1 - c0)
  dist = jnp.clip(jnp.abs(rows - (slope * (cols - c0) + r0)), 0, 2.3 - 1e-10)
  v = jnp.clip(jnp.log(jnp.maximum(1 - dist / 2.3, 1e-30)) + 1, 0, 1)      # dist → 2.3: log → −∞ → 0
  keep = (cols >= jnp.floor(c0)) & (cols < jnp.ceil(c1)) & (c1 != c0)
  return jnp.where(keep, v, 0.0)


def _two_rows_draw(key, x, p):
  """Two integers in [0, H − 2] (MNIST-C: randint(0, 27) on 28 rows)."""
  del p
  return jax.random.randint(key, (2,), 0, x.shape[0] - 1)


def dotted_line(x, rows, p):
  """rows = (r0, r1): line from (0, r0) to (W − 1, r1), columns with (col // 2) even removed."""
  del p
  h, w = x.shape[:2]
  line = line_from_points(h, w, 0.0, rows[0].astype(jnp.float32), float(w - 1), rows[1].astype(jnp.float32))
  line = line * jnp.asarray((np.arange(w) // 2) % 2 == 1, x.dtype)[None, :]
  return _clip(x + line[..., None])


def _zigzag_draw(key, x, p):
  """(r0 in [0, H − 2], r1 − r0 in [−5, 4]) as MNIST-C's randint(0, 27), randint(−5, 5)."""
  del p
  k1, k2 = jax.random.split(key)
  return jnp.stack([jax.random.randint(k1, (), 0, x.shape[0] - 1), jax.random.randint(k2, (), -5, 5)])


def _zigzag_count(w: int, a: float = 2.0) -> int:
  """Teeth of MNIST-C's zigzag, int((d − a)//(2a)) + 1, constant over the possible lengths d."""
  run = (w - 3) - 2
  counts = {int((d - a) // (2 * a)) + 1 for d in (run, run / np.cos(np.arctan(5 / run)))}
  if len(counts) != 1:
    raise ConfigError(f'zigzag: the tooth count changes with the angle at width {w}')
  return counts.pop()


def zigzag(x, draws, p):
  """draws = (r0, r1 − r0); MNIST-C's zigzag from column 2 to W − 3 with teeth a = b = 2."""
  del p
  h, w = x.shape[:2]
  a = b = 2.0
  c0, c1 = 2.0, float(w - 3)
  r0 = draws[0].astype(jnp.float32)
  theta = jnp.arctan(draws[1].astype(jnp.float32) / (c1 - c0))
  d = (c1 - c0) / jnp.cos(theta)
  n = _zigzag_count(w, a)
  pts_c = [0.0] + [(2 * i + 1) * a for i in range(n)]
  pts_r = [0.0] + [(-1) ** i * b for i in range(n)]
  max_c = 2 * a * jnp.floor(d / (2 * a))
  pts_c.append(d)                                    # the reference appends it when d ≠ max_c
  pts_r.append(pts_r[-1] / (2 * (d - max_c)))
  pc, pr = jnp.stack([jnp.asarray(v, jnp.float32) for v in pts_c]), jnp.stack([jnp.asarray(v, jnp.float32)
                                                                                 for v in pts_r])
  cs = jnp.cos(theta) * pc - jnp.sin(theta) * pr + c0
  rs = jnp.sin(theta) * pc + jnp.cos(theta) * pr + r0
  lines = sum(line_from_points(h, w, cs[i - 1], rs[i - 1], cs[i], rs[i]) for i in range(1, len(pts_c)))
  return _clip(x + lines[..., None])


def _spatter_draw(key, x, p):
  del p
  return jax.random.normal(key, x.shape[:2], jnp.float32)


def spatter(x, z, p):
  """MNIST-C's mud spatter; z ~ N(0, 1) [H, W] (the liquid layer is loc + scale·z)."""
  liquid = gaussian_filter((p['loc'] + p['scale'] * z)[..., None], p['sigma'])[..., 0]
  m = gaussian_filter((liquid > p['threshold']).astype(jnp.float32)[..., None], p['sigma2'])[..., 0]
  m = jnp.where(m < 0.8, 0.0, m)[..., None]
  return _clip(x * (1 - m) + (63 / 255) * m)


# ---------------------------------------------------------------------------------------
# Registry and parameter tables.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corruption:
  """apply(x [H, W, C], draws, params) -> [H, W, C]; draw(key, x, params) -> draws (None: deterministic)."""
  name: str
  apply: Callable[[Array, Any, dict], Array]
  draw: Optional[Callable[[Array, Array, dict], Any]] = None


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in [
    Corruption('gaussian_noise', gaussian_noise, _normal),
    Corruption('shot_noise', shot_noise, _poisson),
    Corruption('impulse_noise', impulse_noise, _impulse_draw),
    Corruption('speckle_noise', speckle_noise, _normal),
    Corruption('gaussian_blur', gaussian_blur),
    Corruption('defocus_blur', defocus_blur),
    Corruption('glass_blur', glass_blur, _glass_draw),
    Corruption('motion_blur', motion_blur, _motion_draw),
    Corruption('zoom_blur', zoom_blur),
    Corruption('fog', fog, _fog_draw),
    Corruption('brightness', brightness),
    Corruption('contrast', contrast),
    Corruption('elastic_transform', elastic_transform, _elastic_draw),
    Corruption('pixelate', pixelate),
    Corruption('jpeg_compression', jpeg_compression),
    Corruption('shear', shear, _affine_draw),
    Corruption('rotate', rotate, _affine_draw),
    Corruption('scale', scale),
    Corruption('translate', translate, _affine_draw),
    Corruption('stripe', stripe),
    Corruption('spatter', spatter, _spatter_draw),
    Corruption('dotted_line', dotted_line, _two_rows_draw),
    Corruption('zigzag', zigzag, _zigzag_draw),
]}


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
        'elastic_transform': [dict(alpha=a, sigma=s, amplitude=1 / 32, affine=f, affine_border='reflect101',
                                   map_border='symmetric', alpha_of_size=True)
                              for a, s, f in [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                              (0.1, 0.03, 0.03)]],
        'pixelate': _rows('c', [0.95, 0.9, 0.85, 0.75, 0.65], up='box'),
        'jpeg_compression': _rows('quality', [80, 65, 58, 50, 40]),
    },
    'mnist_c': {
        **_COMMON,
        'glass_blur': _rows('sigma delta iterations', _GLASS, swap=True, coin=True),
        'zoom_blur': _rows('zooms', _IMAGENET_ZOOMS, crop='center'),
        'fog': _rows('c decay', _FOG, mapsize=256),
        'elastic_transform': [dict(alpha=a, sigma=s, amplitude=1 / 28, affine=f, affine_border='constant',
                                   map_border='constant', alpha_of_size=True)
                              for a, s, f in [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
                                              (0.12, 0.01, 0.02)]],
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


# ---------------------------------------------------------------------------------------
# Corruption error (Hendrycks & Dietterich 2019).
# ---------------------------------------------------------------------------------------


def mean_errors(accuracy: dict) -> dict[str, np.ndarray]:
  """{name: [S] error rate} = 1 − the seed mean of {name: [[S] per seed]} (or of [S]) accuracies."""
  return {name: 1.0 - np.atleast_2d(np.asarray(a, np.float64)).mean(0) for name, a in accuracy.items()}


def corruption_errors(errors: dict, baseline_errors: dict, clean_error: Optional[float] = None,
                      baseline_clean_error: Optional[float] = None) -> dict[str, float]:
  """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} per corruption (``errors``: {name: [S] error rates}).

  With both clean errors: the relative CE, Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean).
  Errors are 1 − accuracy (average over seeds first).
  """
  out = {}
  relative = clean_error is not None and baseline_clean_error is not None
  for name, e in errors.items():
    if name not in baseline_errors:
      raise ValueError(f'the baseline has no errors for {name!r}')
    e, b = np.asarray(e, np.float64), np.asarray(baseline_errors[name], np.float64)
    if e.shape != b.shape:
      raise ValueError(f'{name}: {e.shape[-1]} severities against the baseline\'s {b.shape[-1]}')
    if relative:
      e, b = e - clean_error, b - baseline_clean_error
    den = b.sum()
    out[name] = float(e.sum() / den) if den else math.nan
  return out


def mean_corruption_error(errors: dict, baseline_errors: dict, clean_error: Optional[float] = None,
                          baseline_clean_error: Optional[float] = None) -> float:
  """mCE = mean_c CE_c (``corruption_errors``; the baseline is the unregularized model)."""
  ce = corruption_errors(errors, baseline_errors, clean_error, baseline_clean_error)
  return float(np.mean(list(ce.values())))
