"""The image operations the corruptions are built from: border folding, separable filters and their
kernels, the references' zoom and resize operators, bilinear sampling and affine warps.

Images are float [H, W, C]; the linear operators are built once at trace time as NumPy matrices,
mirroring the scipy / skimage / cv2 / PIL call each reference makes (docs/corruptions.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

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


def apply_separable(x: Array, mh: np.ndarray, mw: np.ndarray) -> Array:
  """Applies [H', H] on rows and [W', W] on columns of x [H, W, C]."""
  y = jnp.einsum('ij,jkc->ikc', jnp.asarray(mh, x.dtype), x)
  return jnp.einsum('kl,ilc->ikc', jnp.asarray(mw, x.dtype), y)


def gaussian_filter(x: Array, sigma, mode: str = 'edge', truncate: float = 4.0) -> Array:
  """skimage/scipy Gaussian filter of x [H, W, C] over H and W (σ scalar or (σ_h, σ_w))."""
  sh, sw = (sigma, sigma) if np.isscalar(sigma) else sigma
  return apply_separable(x, _gaussian_matrix(x.shape[0], sh, mode, truncate),
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


def clip01(x):
  """x clipped to [0, 1], as the references clip every corrupted image."""
  return jnp.clip(x, 0.0, 1.0)


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


def pixel_grid(h: int, w: int) -> tuple[Array, Array]:
  """(rows, cols) float32 [H, W]: the row and column index of every pixel."""
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  return rows, cols


def affine_warp(x: Array, matrix: Array, mode: str) -> Array:
  """Output (row, col) ← x bilinearly at the input point ``matrix``·(col, row, 1) (a [2, 3] map in (x, y)).

  With the inverse map of M and mode 'reflect101' / 'grid-constant' this is cv2
  ``warpAffine(x, M, borderMode=BORDER_REFLECT_101 / BORDER_CONSTANT)`` of float images.
  """
  rows, cols = pixel_grid(*x.shape[:2])
  src_c = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
  src_r = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
  return bilinear(x, src_r, src_c, mode)


def about_center(a: Array, h: int, w: int) -> Array:
  """[2, 3] affine map with linear part ``a`` [2, 2] that keeps ((W − 1)/2, (H − 1)/2) fixed."""
  c = jnp.asarray([(w - 1) / 2, (h - 1) / 2], jnp.float32)
  return jnp.concatenate([a, (c - a @ c)[:, None]], axis=1)
