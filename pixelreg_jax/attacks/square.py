"""The Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), L∞ and L2, in pure JAX.

Score-based and untargeted: the model is seen only through ``logits_fn(images) -> [B, classes]``
(no gradients). Each image runs a random search that minimises the margin loss

  m(x̃) = z_y(x̃) − max_{j≠y} z_j(x̃)           (logits z; the image is misclassified when argmax ≠ y)

over the ε-ball around x intersected with [lo, hi], accepting a candidate only if it lowers m.

  L∞  start: vertical stripes x + ε·σ, σ ∈ {−1, 1} per image, column and channel.
      step:  a random s×s window is set to x + ε·σ (σ ∈ {−1, 1} per channel), σ drawn uniformly
             among the values that change the current window (the reference's redraw loop).
  L2  start: a grid of ⌊H/5⌋-sized tiles, each a pair of opposite "pseudo-Gaussian" bumps
             (random orientation, random sign per channel), scaled to ‖δ‖₂ = ε.
      step:  a random s×s window 1 gets a new bump plus its old content (normalised); the mass of
             a second random window 2 is moved into window 1, which also takes the budget left
             (ε² − ‖δ‖²); then δ is rescaled to ‖δ‖₂ = ε.
  both: the window side follows p(i), the fraction of pixels changed at iteration i of n: p_init,
        halved at 1, 5, 20, 50, 100, 200, 400, 600, 800 ‰ of n (s = round(√(p·H·W)); L∞ clamped
        to [1, min(H, W) − 1]; L2 odd, from 3 to min(H, W)); candidates are clipped to
        [lo, hi].

Queries are counted exactly, per image: the clean prediction is free (query 0), the start is
query 1 and each step one more; an image stops consuming queries once it is misclassified, and
never uses more than ``n_queries``. The batch stops when every image is fooled or out of budget
(``lax.while_loop``). Differences from the authors' NumPy code, none of which changes what an
image can reach: windows are drawn per image (the L2 reference draws one window per batch, the L2
start one bump orientation per tile and batch), a window's corner is uniform over every position
that fits, as the paper's algorithm says (the reference never draws the last row or column), and
its L2 loop spends n_queries + 1 queries where this one stops at n_queries.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.attacks import whitebox
from pixelreg_jax.errors import ConfigError

Array = jax.Array
NORMS = ('linf', 'l2')

# The default ε per dataset family (data.DatasetInfo.family), in [0, 1] pixel units: levels of the
# PGD grids (whitebox.PGD_MAX_EPS), so that Square and PGD compare at equal ε.
SQUARE_EPS = {
    'mnist': {'linf': (0.0, 0.1, 0.2, 0.3), 'l2': (0.0, 1.0, 2.0, 3.0)},
    'cifar': {'linf': (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255), 'l2': (0.0, 0.25, 0.5, 1.0)},
}


@dataclasses.dataclass(frozen=True)
class SquareConfig:
  """Settings of ``square_attack`` (hashable: a static argument under ``jax.jit``).

  Attributes:
    norm: 'linf' or 'l2'.
    n_queries: the budget per image, the start included (≥ 1).
    p_init: the fraction of pixels the first steps change, in (0, 1] (the authors' standard:
      0.05 for L∞ and 0.1 for L2 on ImageNet, 0.8 for robust and small-image models, AutoAttack's
      and ART's default; on 28×28 Fashion-MNIST 0.8 is the strongest of 0.05-0.8, docs/square.md).
    redraw: L∞: draw a window's signs among those that change it, as the authors' NumPy code does
      (False: any signs, as AutoAttack's PyTorch port and ART do, which spends queries on
      candidates equal to the current point; for parity tests).
  """
  norm: str = 'linf'
  n_queries: int = 1000
  p_init: float = 0.8
  redraw: bool = True

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ConfigError(f'Square norm {self.norm!r} is not one of {NORMS}')
    if self.n_queries < 1 or not 0.0 < self.p_init <= 1.0:
      raise ConfigError(f'Square needs n_queries >= 1 and 0 < p_init <= 1, got n_queries={self.n_queries}, '
                        f'p_init={self.p_init}')

  def settings(self) -> dict:
    """JSON-serialisable settings; ``lp``, not ``norm``: a curve whose settings hold a norm is PGD."""
    return {'attack': 'square', 'lp': self.norm, 'n_queries': self.n_queries, 'p_init': self.p_init,
            'loss': 'margin', 'redraw': self.redraw}


class SquareResult(NamedTuple):
  """Per image of a batch of B: ``fooled`` [B] bool (misclassified within the budget, the clean
  misclassified included), ``queries`` [B] int32 (queries used: 0 for a clean misclassified image
  or ε = 0, else 1..n_queries; a fooled image's count is the query that fooled it), ``x_adv``
  [B, H, W, C] (the best point found, inside the ε-ball and [lo, hi]) and ``margin`` [B] (its
  margin z_y − max_{j≠y} z_j)."""
  fooled: Array
  queries: Array
  x_adv: Array
  margin: Array


# -- the schedule and the L2 bumps (host side, float64) -------------------------------------------


def p_fraction(p_init: float, i: int, n: int) -> float:
  """p(i): the fraction of pixels changed at iteration i (0-based) of a run of n; the paper's
  piecewise-constant schedule, halving at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of
  10000 (rescaled to n)."""
  t = (i * 10000) // n
  bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
  return p_init / 2 ** sum(t > b for b in bounds)


def window_sizes(cfg: SquareConfig, height: int, width: int) -> np.ndarray:
  """The window side s of each step, int32 [max(n_queries − 1, 1)] (step i is query i + 2)."""
  sizes = []
  for i in range(max(cfg.n_queries - 1, 1)):
    s = int(round(np.sqrt(p_fraction(cfg.p_init, i, cfg.n_queries) * height * width)))
    if cfg.norm == 'linf':
      s = min(max(s, 1), min(height, width) - 1)
    else:
      s, top = max(s, 3), min(height, width)
      s = min(s + 1 if s % 2 == 0 else s, top if top % 2 else top - 1)
    sizes.append(s)
  return np.asarray(sizes, np.int32)


def _bump(rows: int, cols: int) -> np.ndarray:
  """[rows, cols]: Σ_{k ≥ d} 1/(k+1)² over the rings k of Chebyshev distance d from the centre
  (rows//2, cols//2), k < max(rows, cols)//2 + 1; unit Frobenius norm."""
  if rows == 0 or cols == 0:
    return np.zeros((rows, cols))
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
  d = np.maximum(np.abs(r - rows // 2), np.abs(c - cols // 2))
  tail = np.cumsum(1.0 / np.arange(max(rows, cols) // 2 + 1, 0, -1) ** 2)[::-1]    # tail[d] = Σ_{k≥d}
  out = tail[d]
  return out / np.sqrt(np.sum(out ** 2))


def bump_pair(s: int) -> np.ndarray:
  """[s, s]: a bump on the top ⌊s/2⌋ rows and its negative on the others, unit Frobenius norm."""
  out = np.concatenate([_bump(s // 2, s), -_bump(s - s // 2, s)])
  return out / np.sqrt(np.sum(out ** 2))


@functools.lru_cache(maxsize=None)
def bump_table(size: int) -> np.ndarray:
  """float32 [size + 1, size, size]: ``bump_pair(s)`` in the top-left corner of slice s."""
  table = np.zeros((size + 1, size, size), np.float32)
  for s in range(1, size + 1):
    table[s, :s, :s] = bump_pair(s)
  return table


# -- the attack ------------------------------------------------------------------------------------


def margin(logits: Array, labels: Array) -> Array:
  """z_y − max_{j≠y} z_j, [B] (the negative of PGD's margin loss)."""
  return -whitebox.attack_loss(logits, labels, 'margin')


def _norm(v: Array, axis) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axis, keepdims=True))


def _corners(key: Array, b: int, s: Array, height: int, width: int) -> tuple[Array, Array]:
  """Top-left corners [B] of s×s windows, uniform over every position that fits."""
  kr, kc = jax.random.split(key)
  return (jax.random.randint(kr, (b,), 0, height - s + 1), jax.random.randint(kc, (b,), 0, width - s + 1))


def _window(r: Array, c: Array, s: Array, height: int, width: int) -> tuple[Array, Array, Array]:
  """Mask [B, H, W, 1] of the windows and the in-window coordinates u, v [B, H, W]."""
  u = jnp.arange(height)[None, :, None] - r[:, None, None]
  v = jnp.arange(width)[None, None, :] - c[:, None, None]
  inside = (u >= 0) & (u < s) & (v >= 0) & (v < s)
  return inside[..., None], u, v


def _bumps_at(table: Array, s: Array, u: Array, v: Array, inside: Array, flip: Array) -> Array:
  """The s×s bump pair placed by in-window coordinates u, v [B, H, W] (transposed where flip [B]),
  zero outside ``inside`` [B, H, W, 1]: [B, H, W, 1]."""
  n = table.shape[1] - 1
  uc, vc = jnp.clip(u, 0, n), jnp.clip(v, 0, n)
  f = flip[:, None, None]
  val = table[s][jnp.where(f, vc, uc), jnp.where(f, uc, vc)]
  return jnp.where(inside, val[..., None], 0.0)


def _signs(key: Array, shape: tuple, dtype) -> Array:
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def _linf_start(key: Array, x: Array, eps: Array, lo: Any, hi: Any) -> Array:
  b, _, w, c = x.shape
  return jnp.clip(x + eps * _signs(key, (b, 1, w, c), x.dtype), lo, hi)


def _linf_step(key: Array, x: Array, x_best: Array, eps: Array, s: Array, lo: Any, hi: Any,
               redraw: bool = True) -> Array:
  """A window of each image set to x + ε·σ, σ uniform among the sign vectors that change it
  (``redraw``; else uniform among all)."""
  b, h, w, c = x.shape
  k_pos, k_sign = jax.random.split(key)
  inside, _, _ = _window(*_corners(k_pos, b, s, h, w), s, h, w)
  cand = jnp.stack([jnp.clip(x - eps, lo, hi), jnp.clip(x + eps, lo, hi)])            # [2, B, H, W, C]
  changes = jnp.any((jnp.abs(cand - x_best) >= 1e-7) & inside, axis=(2, 3))          # [2, B, C]
  options = np.array(np.meshgrid(*[[0, 1]] * c, indexing='ij')).reshape(c, -1).T     # [2^C, C]: 1 = +ε
  up = jnp.asarray(options == 1)
  picked = jnp.where(up[None], changes[1][:, None, :], changes[0][:, None, :])         # [B, 2^C, C]
  allowed = jnp.any(picked, axis=-1) | (not redraw)                                  # [B, 2^C]
  choice = jax.random.categorical(k_sign, jnp.where(allowed, 0.0, -jnp.inf))         # [B]
  return jnp.where(inside, jnp.where(up[choice][:, None, None, :], cand[1], cand[0]), x_best)


def _l2_start(key: Array, x: Array, eps: Array, lo: Any, hi: Any) -> Array:
  b, h, w, c = x.shape
  s = h // 5
  if s < 1:
    raise ConfigError(f'the L2 Square attack needs images of at least 5 rows, got {h}')
  start = (h - 5 * s) // 2
  tiles_h, tiles_w = h // s, w // s
  i, j = np.arange(h) - start, np.arange(w) - start
  ti, tj = np.floor_divide(i, s), np.floor_divide(j, s)
  valid = ((i >= 0) & (ti < tiles_h))[:, None] & ((j >= 0) & (tj < tiles_w))[None, :]    # [H, W]
  ti, tj = np.clip(ti, 0, tiles_h - 1), np.clip(tj, 0, tiles_w - 1)
  u, v = np.broadcast_to(np.mod(i, s)[:, None], (h, w)), np.broadcast_to(np.mod(j, s)[None, :], (h, w))
  k_flip, k_sign = jax.random.split(key)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, tiles_h, tiles_w))[:, ti[:, None], tj[None, :]]   # [B, H, W]
  sign = _signs(k_sign, (b, tiles_h, tiles_w, c), x.dtype)[:, ti[:, None], tj[None, :]]          # [B, H, W, C]
  pair = jnp.asarray(bump_pair(s), x.dtype)
  val = jnp.where(flip, pair[v, u], pair[u, v]) * jnp.asarray(valid)
  delta = val[..., None] * sign
  return jnp.clip(x + delta / jnp.maximum(_norm(delta, (1, 2, 3)), 1e-12) * eps, lo, hi)


def _l2_step(key: Array, x: Array, x_best: Array, eps: Array, s: Array, lo: Any, hi: Any,
             redraw: bool = True) -> Array:
  """Window 2's mass and the unused budget moved into window 1, with a new bump there."""
  del redraw                                                          # no candidate repeats the current point
  b, h, w, c = x.shape
  k1, k2, k_flip, k_sign = jax.random.split(key, 4)
  in1, u, v = _window(*_corners(k1, b, s, h, w), s, h, w)
  in2, _, _ = _window(*_corners(k2, b, s, h, w), s, h, w)
  delta = x_best - x
  norm_window1 = _norm(delta * in1, (1, 2))                                          # [B, 1, 1, C]
  norm_image = _norm(delta, (1, 2, 3))                                               # [B, 1, 1, 1]
  norm_both = _norm(delta * (in1 | in2), (1, 2))                                     # [B, 1, 1, C]
  table = jnp.asarray(bump_table(min(h, w)), x.dtype)
  bump = _bumps_at(table, s, u, v, in1, jax.random.bernoulli(k_flip, 0.5, (b,)))   # [B, H, W, 1]
  new = bump * _signs(k_sign, (b, 1, 1, c), x.dtype) + delta * in1 / (1e-10 + norm_window1)
  target = jnp.sqrt(jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / c + norm_both ** 2)
  new = new / jnp.maximum(_norm(new, (1, 2)), 1e-12) * target
  delta = jnp.where(in1, new, jnp.where(in2, 0.0, delta))
  return jnp.clip(x + delta / jnp.maximum(_norm(delta, (1, 2, 3)), 1e-12) * eps, lo, hi)


def square_attack(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array, eps: Array,
                  lo: Any = 0.0, hi: Any = 1.0, cfg: SquareConfig = SquareConfig()) -> SquareResult:
  """The untargeted Square attack of ``cfg`` at radius ``eps`` on a batch: a ``SquareResult``.

  Jittable (``cfg`` static; ``eps``, ``lo``, ``hi`` may be traced) and vmappable; the steps are one
  ``lax.while_loop`` that ends when no image is still attacked.

  Args:
    logits_fn: the attacked model, [B, H, W, C] -> [B, classes]; only its outputs are used.
    key: PRNG key (step i uses fold_in(key, i + 1), the start fold_in(key, 0)).
    x: [B, H, W, C] clean images in [lo, hi]; labels: [B] int true labels.
    eps: scalar radius in pixel units (ε = 0: nothing is attacked, no query is spent).
    lo, hi: the valid pixel range, scalars (or broadcastable to [B, 1, 1, 1]).
    cfg: ``SquareConfig``.
  """
  b, h, w, _ = x.shape
  eps = jnp.asarray(eps, x.dtype)
  start_fn, step_fn = (_linf_start, _linf_step) if cfg.norm == 'linf' else (_l2_start, _l2_step)
  sizes = jnp.asarray(window_sizes(cfg, h, w))
  clean = logits_fn(x)                                                    # query 0: free
  wrong = jnp.argmax(clean, -1) != labels
  running = ~wrong & (eps > 0)
  x_start = start_fn(jax.random.fold_in(key, 0), x, eps, lo, hi)
  logits = logits_fn(x_start)
  x_best = jnp.where(running[:, None, None, None], x_start, x)
  best = jnp.where(running, margin(logits, labels), margin(clean, labels))
  hit = running & (jnp.argmax(logits, -1) != labels)
  state = (jnp.int32(0), x_best, best, wrong | hit, running.astype(jnp.int32), running & ~hit)

  def cond(state):
    i, *_, active = state
    return (i < cfg.n_queries - 1) & jnp.any(active)

  def body(state):
    i, x_best, best, fooled, queries, active = state
    x_new = step_fn(jax.random.fold_in(key, i + 1), x, x_best, eps, sizes[i], lo, hi, cfg.redraw)
    logits = logits_fn(x_new)
    m_new = margin(logits, labels)
    hit = jnp.argmax(logits, -1) != labels
    accept = active & ((m_new < best) | hit)
    x_best = jnp.where(accept[:, None, None, None], x_new, x_best)
    return (i + 1, x_best, jnp.where(accept, m_new, best), fooled | (active & hit),
            queries + active.astype(jnp.int32), active & ~hit)

  _, x_best, best, fooled, queries, _ = jax.lax.while_loop(cond, body, state)
  return SquareResult(fooled, queries, x_best, best)


def correct_under_square(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                         levels: Array, checkpoints: Array, lo: Any = 0.0, hi: Any = 1.0,
                         cfg: SquareConfig = SquareConfig(), mask: Optional[Array] = None) -> dict:
  """Correct predictions under the Square attack at each ε, and after each query count.

  The levels run one after another (``lax.map``, each with its own early stop); level l uses
  fold_in(key, l). An image counts as correct after q queries unless it was fooled by query q.

  Args:
    logits_fn: the attacked model. key: PRNG key of this batch.
    x: [B, H, W, C] clean images in [lo, hi]; labels: [B].
    levels: [L] radii ε. checkpoints: [Q] int query counts (0 = the clean prediction).
    lo, hi: the valid pixel range. cfg: ``SquareConfig`` (static).
    mask: [B] weights of real (1) and padding (0) images.

  Returns:
    {'accuracy': [L] correct counts after the whole budget, 'by_queries': [L, Q] after each
    checkpoint, 'queries': [L] queries spent in all (the masked sum over images)}.
  """
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
  checkpoints = jnp.asarray(checkpoints, jnp.int32)

  def one(a):
    eps, i = a
    r = square_attack(logits_fn, jax.random.fold_in(key, i), x, labels, eps, lo, hi, cfg)
    fooled_by = r.fooled[:, None] & (r.queries[:, None] <= checkpoints[None, :])      # [B, Q]
    return {'accuracy': jnp.sum(~r.fooled * mask), 'by_queries': jnp.sum(~fooled_by * mask[:, None], 0),
            'queries': jnp.sum(r.queries * mask)}

  levels = jnp.asarray(levels, x.dtype)
  return jax.lax.map(one, (levels, jnp.arange(levels.shape[0])))
