"""The corruptions only MNIST-C has (Mu & Gilmer 2019): affine warps, stripe, spatter and the line ones.

Same interface as ``hendrycks``: ``apply(x [H, W, C], draws, p)``, ``draw(key, x, p)``; the reference's
28×28 constants are expressed through H and W. What each reproduces and how: docs/corruptions.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.attacks.corruptions.ops import about_center, affine_warp, clip01, gaussian_filter, pixel_grid
from pixelreg_jax.errors import ConfigError

Array = jax.Array

# -- affine warps about the centre ------------------------------------------------------


def _random_sign(key, shape=()):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


def _affine_draw(key, x, p):
  del x, p
  return _random_sign(key, (2,))


def _warp_about_center(x, a):
  """skimage ``warp(x, inverse_map=aff)`` with aff keeping the centre fixed; bilinear, 0 outside."""
  return clip01(affine_warp(x, about_center(a, *x.shape[:2]), 'grid-constant'))


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
  return clip01(affine_warp(x, m, 'grid-constant'))


# -- stripe and lines -------------------------------------------------------------------


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
  rows, cols = pixel_grid(h, w)
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
  return clip01(x + line[..., None])


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
  return clip01(x + lines[..., None])


# -- spatter ----------------------------------------------------------------------------


def _spatter_draw(key, x, p):
  del p
  return jax.random.normal(key, x.shape[:2], jnp.float32)


def spatter(x, z, p):
  """MNIST-C's mud spatter; z ~ N(0, 1) [H, W] (the liquid layer is loc + scale·z)."""
  liquid = gaussian_filter((p['loc'] + p['scale'] * z)[..., None], p['sigma'])[..., 0]
  m = gaussian_filter((liquid > p['threshold']).astype(jnp.float32)[..., None], p['sigma2'])[..., 0]
  m = jnp.where(m < 0.8, 0.0, m)[..., None]
  return clip01(x * (1 - m) + (63 / 255) * m)


# (name, apply, draw) of this module's corruptions, in ``registry.CORRUPTIONS``'s order; draw None: deterministic.
ENTRIES = (
    ('shear', shear, _affine_draw),
    ('rotate', rotate, _affine_draw),
    ('scale', scale, None),
    ('translate', translate, _affine_draw),
    ('stripe', stripe, None),
    ('spatter', spatter, _spatter_draw),
    ('dotted_line', dotted_line, _two_rows_draw),
    ('zigzag', zigzag, _zigzag_draw),
)
