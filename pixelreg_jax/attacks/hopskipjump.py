"""Decision-based HopSkipJump attack (Chen, Jordan & Wainwright 2020), L2 and L∞, batched over images.

Each image has its own state; every phase is a batched, masked operation, so an image's attack
follows foolbox 3.3.4's ``HopSkipJumpAttack`` run on that image alone (batch of 1), with:

  start     foolbox's ``LinearSearchBlendedUniformNoiseAttack(steps=50)``: up to ``init_tries``
            uniform draws in [lo, hi] until one is misclassified, then the first adversarial blend
            (1 − ε)x + ε·noise on ε = linspace(0, 1, 51). No adversarial draw: ``no_start``.
  iteration t = 0, 1, …  binary search toward x (the boundary) from the current point; then
            δ = 0.1·(hi − lo) at t = 0, else γ·dist/D (foolbox's √D·θ·dist for L2 with θ = γ/D^1.5,
            D·θ·dist for L∞ with θ = γ/D²); n_t = ⌊min(100·√(t + 1), 10000)⌋ random unit
            directions u (Gaussian for L2, uniform in [−1, 1]^D for L∞, L2-normalised), queried at
            clip(x̃ + δu); the gradient direction is the mean of (±1 − their mean)·u (not centred when
            all agree), L2-normalised per image; the update is it (L2) or its sign (L∞); the
            geometric step search tries ε = dist/√(t + 1), halving until clip(x̃ + ε·update) is
            misclassified; then the next binary search.
  binary search  on the blend (L2: (1 − α)x + α·x̃, α ∈ [0, 1]) or the L∞ radius (x + clamp(x̃ − x,
            ±r), r ∈ [0, ‖x̃ − x‖∞]); a fixed number of halvings, as foolbox's loop makes for every
            image: ⌈log₂(D^1.5/γ)⌉ (L2) or ⌈log₂(D²/γ)⌉ (L∞), 15 and 20 for D = 784.

Queries are counted per image: every prediction of a point of that image (start draws, blend
steps, binary-search midpoints, gradient directions, step-search proposals). The attack runs until
an image has no budget left (``max(budgets)``) or ``max_steps`` iterations: a gradient estimate is
made only if all its n_t queries fit, a binary-search or step-search query only while one is left.
The best adversarial point an image holds (the start, each adversarial midpoint, each accepted
proposal: points predicted misclassified) is kept per budget b, among those found after at most b
queries. foolbox's assertions that re-predict its iterates are not made (or counted); the kept
points are predicted once more at the end (``not_adversarial`` where that disagrees; not counted).

Differences from foolbox 3.3.4 (docs/hopskipjump.md): foolbox normalises its random directions
(``flatten(rv, keep=1)``) and its gradient (``ep.norms.l2`` without an axis) over the whole batch,
so its probe radius and L2 step depend on the batch; here each image is normalised on its own
(foolbox with one image per call). foolbox clips to [0, 1] whatever the model's bounds; here to
[lo, hi] (the same for bounds (0, 1)), and δ₀ = 0.1 is scaled by hi − lo. The step search halves at
most ``max_halvings`` times (foolbox: until success; ε·update then falls below float32 resolution
and the proposal is x̃). Random draws of image i depend on the key, B and i. The probes (δ = dist/D)
are small enough that float32 rounding of the logits decides some answers near the boundary: a
model that rounds a row differently in another batch size gives a different attack there.

Distances reported: ‖(x̃ − x)/(hi − lo)‖₂/√D (L2, the RMS pixel change in [0, 1] units) or
‖(x̃ − x)/(hi − lo)‖∞ (L∞), D = H·W·C.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.attacks.boundary import first_adversarial_draw
from pixelreg_jax.errors import ConfigError

Array = jax.Array
NORMS = ('l2', 'linf')


@dataclasses.dataclass(frozen=True)
class HopSkipJumpConfig:
  """Settings of ``hopskipjump``; the defaults are foolbox 3.3.4's (steps aside).

  Attributes:
    norm: 'l2' or 'linf' (foolbox's ``constraint``).
    budgets: query budgets (increasing); the best distance within each is reported.
    max_steps: iterations at most (foolbox's ``steps``, 64 there); the budget usually ends first.
    initial_num_evals, max_num_evals: n_t = ⌊min(initial·√(t + 1), max)⌋ gradient queries.
    gamma: binary-search threshold θ = γ/D^1.5 (L2) or γ/D² (L∞).
    init_tries: uniform draws per image for a start (foolbox ``directions``: 1000).
    blend_steps: the start's blend grid is linspace(0, 1, blend_steps + 1) (foolbox HSJ: 50).
    eval_chunk: gradient directions per image in one ``predict_fn`` call (memory, not results).
    max_halvings: step-search tries at most per iteration.
  """
  norm: str = 'l2'
  budgets: tuple[int, ...] = (1000, 5000, 25000)
  max_steps: int = 10000
  initial_num_evals: int = 100
  max_num_evals: int = 10000
  gamma: float = 1.0
  init_tries: int = 1000
  blend_steps: int = 50
  eval_chunk: int = 100
  max_halvings: int = 40

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ConfigError(f'hopskipjump norm {self.norm!r} unknown; use one of {NORMS}')
    b = tuple(self.budgets)
    if not b or any(int(v) < 1 for v in b) or list(b) != sorted(set(b)):
      raise ConfigError(f'hopskipjump budgets must be increasing positive integers (got {b})')
    if self.max_steps < 0:
      raise ConfigError(f'hopskipjump max_steps must be >= 0 (got {self.max_steps})')
    for name in ('initial_num_evals', 'max_num_evals', 'init_tries', 'blend_steps', 'eval_chunk',
                 'max_halvings'):
      if getattr(self, name) < 1:
        raise ConfigError(f'hopskipjump {name} must be >= 1 (got {getattr(self, name)})')
    if not self.gamma > 0:
      raise ConfigError(f'hopskipjump gamma must be > 0 (got {self.gamma})')


def num_evals_table(cfg: HopSkipJumpConfig) -> np.ndarray:
  """n_t for t = 0 .. max_steps − 1 (at least t = 0), as foolbox computes it (float64): [max_steps] int32."""
  t = np.arange(1, max(cfg.max_steps, 1) + 1, dtype=np.float64)
  return np.minimum(cfg.initial_num_evals * np.sqrt(t), cfg.max_num_evals).astype(np.int32)


def search_halvings(norm: str, d: int, gamma: float) -> int:
  """Binary-search steps foolbox makes for images of D = ``d`` elements: the interval (1, or the
  L∞ distance) halves until it is at most θ = γ/D^1.5 (L2) or γ/D² (L∞) of its start."""
  thr = gamma / (d * math.sqrt(d)) if norm == 'l2' else gamma / (d * d)
  k, width = 0, 1.0
  while width > thr:
    width, k = width / 2, k + 1
  return k


# ---------------------------------------------------------------------------------------
# Small helpers on batches [B, ...].
# ---------------------------------------------------------------------------------------


def _b(v: Array, like: Array) -> Array:
  """[B] -> [B, 1, ...] matching ``like``'s rank."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _l2(v: Array) -> Array:
  """L2 norm over all but the first axis: [B, ...] -> [B]."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def raw_distance(norm: str, a: Array, x: Array) -> Array:
  """foolbox's distance ‖a − x‖₂ or ‖a − x‖∞ in input units: [B]."""
  v = (a - x).reshape(x.shape[0], -1)
  return jnp.sqrt(jnp.sum(v * v, axis=1)) if norm == 'l2' else jnp.max(jnp.abs(v), axis=1)


def distance(norm: str, a: Array, x: Array, lo: Array, hi: Array) -> Array:
  """Reported distance: ‖(a − x)/(hi − lo)‖₂/√D (L2) or ‖(a − x)/(hi − lo)‖∞ (L∞): [B]."""
  u = ((a - x) / (hi - lo)).reshape(x.shape[0], -1)
  if norm == 'l2':
    return jnp.sqrt(jnp.sum(u * u, axis=1) / u.shape[1])
  return jnp.max(jnp.abs(u), axis=1)


def project(norm: str, x: Array, p: Array, r: Array) -> Array:
  """The binary search's point at parameter r [B]: (1 − r)x + r·p (L2) or x + clamp(p − x, ±r) (L∞)."""
  r = _b(r, x)
  if norm == 'l2':
    return (1.0 - r) * x + r * p
  d = p - x
  return jnp.where(d > r, x + r, jnp.where(d < -r, x - r, p))


# ---------------------------------------------------------------------------------------
# The attack's phases. ``s`` is the state dict (every entry [B] or [B, ...] unless noted):
#   adv (current adversarial point), count (queries), active (still attacking),
#   best_d [NB, B], best_x [NB, B, ...] (best point within each budget), t (iteration, scalar).
# ---------------------------------------------------------------------------------------


def _keep(s: dict, point: Array, found: Array, budgets: Array, norm: str, x: Array, lo, hi) -> dict:
  """Offers ``point`` (predicted adversarial where ``found`` [B]) to each budget it fits in."""
  d = distance(norm, point, x, lo, hi)
  better = found[None] & (s['count'][None] <= budgets[:, None]) & (d[None] < s['best_d'])   # [NB, B]
  return dict(s, best_d=jnp.where(better, d[None], s['best_d']),
              best_x=jnp.where(_b(better, s['best_x']), point[None], s['best_x']))


def _start(predict_fn, key, x, labels, lo, hi, cfg: HopSkipJumpConfig):
  """foolbox's blended-uniform-noise start. Returns (point [B, ...], ok [B], queries [B] int32)."""
  draw = lambda k: jax.random.uniform(k, x.shape, x.dtype) * (hi - lo) + lo  # noqa: E731
  found, index, noise = first_adversarial_draw(predict_fn, key, labels, draw, cfg.init_tries)
  count = jnp.where(found, index + 1, cfg.init_tries).astype(jnp.int32)
  grid = jnp.asarray(np.linspace(0, 1, cfg.blend_steps + 1, dtype=np.float32))

  def body(state):
    g, point, have, count = state
    todo = found & ~have
    e = grid[g].astype(x.dtype)
    cand = (1 - e) * x + e * noise
    adv = predict_fn(cand) != labels
    new = todo & adv
    return g + 1, jnp.where(_b(new, x), cand, point), have | new, count + todo

  def cond(state):
    g, _, have, _ = state
    return (g <= cfg.blend_steps) & jnp.any(found & ~have)

  _, point, have, count = jax.lax.while_loop(cond, body, (jnp.int32(0), x, jnp.zeros_like(found), count))
  return point, have, count


def _binary_search(s, predict_fn, x, labels, lo, hi, budgets, cfg, live, halvings):
  """From each ``live`` image's ``adv`` toward x, ``halvings`` queries while its budget lasts."""
  p = s['adv']
  high = jnp.ones(x.shape[0], x.dtype) if cfg.norm == 'l2' else raw_distance('linf', p, x)

  def body(_, carry):
    s, low, high = carry
    q = live & (s['count'] < budgets[-1])
    mid = (low + high) / 2
    point = project(cfg.norm, x, p, mid)
    adv = predict_fn(point) != labels
    s = dict(s, count=s['count'] + q)
    s = _keep(s, point, q & adv, budgets, cfg.norm, x, lo, hi)
    return s, jnp.where(q & ~adv, mid, low), jnp.where(q & adv, mid, high)

  s, _, high = jax.lax.fori_loop(0, halvings, body, (s, jnp.zeros_like(high), high))
  return dict(s, adv=jnp.where(_b(live, x), project(cfg.norm, x, p, high), p))


def _gradient(s, predict_fn, key, x, labels, lo, hi, delta, n, cfg):
  """The gradient direction at ``adv`` from n [B] int32 queries per image (0: none): [B, ...], unit L2."""
  adv, c = s['adv'], cfg.eval_chunk
  d3 = _b(delta, x)[None]
  chunks = (jnp.max(n) + c - 1) // c

  def body(i, acc):
    s1, s2, m = acc
    k = jax.random.fold_in(key, i)
    shape = (c,) + x.shape
    rv = jax.random.normal(k, shape, x.dtype) if cfg.norm == 'l2' else jax.random.uniform(k, shape, x.dtype, -1, 1)
    rv = rv / _b(jax.vmap(_l2)(rv) + 1e-12, rv)
    pert = jnp.clip(adv[None] + d3 * rv, lo, hi)
    rv = (pert - adv[None]) / (d3 + 1e-8)
    labels_pred = predict_fn(pert.reshape((-1,) + x.shape[1:])).reshape(c, x.shape[0])
    valid = (i * c + jnp.arange(c))[:, None] < n[None]                      # [c, B]
    sign = jnp.where(labels_pred != labels[None], 1.0, -1.0) * valid
    return (s1 + jnp.sum(_b(sign, rv) * rv, 0), s2 + jnp.sum(_b(valid.astype(x.dtype), rv) * rv, 0),
            m + jnp.sum(sign, 0))

  zero = jnp.zeros_like(x)
  s1, s2, m = jax.lax.fori_loop(0, chunks, body, (zero, zero, jnp.zeros(x.shape[0], x.dtype)))
  nf = jnp.maximum(n, 1).astype(x.dtype)
  mean = m / nf
  grad = jnp.where(_b(jnp.abs(mean) == 1, x), s1, s1 - _b(mean, x) * s2) / _b(nf, x)
  return grad / _b(_l2(grad) + 1e-12, x)


def _step_search(s, predict_fn, x, labels, lo, hi, update, eps, live, budgets, cfg):
  """Geometric progression: ε halves until clip(adv + ε·update) is adversarial. Returns (s, moved [B])."""
  def body(carry):
    h, s, eps, moved = carry
    q = live & ~moved & (s['count'] < budgets[-1])
    point = jnp.clip(s['adv'] + _b(eps, x) * update, lo, hi)
    adv = predict_fn(point) != labels
    s = dict(s, count=s['count'] + q)
    s = _keep(s, point, q & adv, budgets, cfg.norm, x, lo, hi)
    s = dict(s, adv=jnp.where(_b(q & adv, x), point, s['adv']))
    return h + 1, s, jnp.where(q & ~adv, eps / 2, eps), moved | (q & adv)

  def cond(carry):
    h, s, _, moved = carry
    return (h < cfg.max_halvings) & jnp.any(live & ~moved & (s['count'] < budgets[-1]))

  _, s, _, moved = jax.lax.while_loop(cond, body, (jnp.int32(0), s, eps, jnp.zeros_like(live)))
  return s, moved


def hopskipjump(predict_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                cfg: HopSkipJumpConfig = HopSkipJumpConfig(), *, bounds: tuple[Any, Any]) -> dict[str, Array]:
  """HopSkipJump on a batch of images (jittable; ``cfg`` static).

  Args:
    predict_fn: images [N, H, W, C] -> predicted labels [N] (int), each image classified on its
      own; called with N = B (start, searches) and N = eval_chunk·B (gradient estimates). Rows of
      images that are done are predicted too, and not counted.
    key: PRNG key.
    x: [B, H, W, C] originals.
    labels: [B] the labels to move away from (untargeted).
    cfg: settings (norm, budgets, …).
    bounds: (lo, hi) scalars or arrays broadcastable to one image: the box every query is clipped
      to, and the scale of the reported distance.

  Returns (NB = len(budgets)):
    'distance' [NB, B]: the best distance (module docstring) of a point predicted adversarial within
      each budget and predicted adversarial again at the end; inf where none.
    'success' [NB, B] (distance finite); 'adversarial' [NB, B, H, W, C] those points (x where not
    success); 'no_start' [B]; 'not_adversarial' [NB, B] (a point was kept but is not adversarial
    when predicted again); 'queries' [B] int32 queries used (≤ max(budgets)); 'start_queries' [B];
    'steps' [B] gradient steps made; 'final' [B, H, W, C] the last iterate (foolbox's return)
    and 'final_distance' [B] its distance (inf where no start).
  """
  lo, hi = (jnp.asarray(v, x.dtype) for v in bounds)
  budgets = jnp.asarray(cfg.budgets, jnp.int32)
  nb, b, d = len(cfg.budgets), x.shape[0], math.prod(x.shape[1:])
  k_start, k_grad = jax.random.split(key)
  point, ok, count = _start(predict_fn, k_start, x, labels, lo, hi, cfg)
  s = {'adv': point, 'count': count, 'active': ok & (count < budgets[-1]), 'steps': jnp.zeros(b, jnp.int32),
       'best_d': jnp.full((nb, b), jnp.inf, x.dtype), 'best_x': jnp.broadcast_to(x[None], (nb,) + x.shape)}
  s = _keep(s, point, ok, budgets, cfg.norm, x, lo, hi)
  table = jnp.asarray(num_evals_table(cfg))
  halvings = search_halvings(cfg.norm, d, cfg.gamma)

  def iteration(carry):
    t, s = carry
    s = _binary_search(s, predict_fn, x, labels, lo, hi, budgets, cfg, s['active'], halvings)
    dist = raw_distance(cfg.norm, s['adv'], x)
    n_t = table[jnp.minimum(t, len(table) - 1)]
    live = s['active'] & (t < cfg.max_steps) & (s['count'] + n_t <= budgets[-1])
    delta = jnp.where(t == 0, 0.1 * jnp.max(hi - lo), cfg.gamma * dist / d)
    grad = _gradient(s, predict_fn, jax.random.fold_in(k_grad, t), x, labels, lo, hi, delta,
                     jnp.where(live, n_t, 0), cfg)
    s = dict(s, count=s['count'] + jnp.where(live, n_t, 0))
    update = grad if cfg.norm == 'l2' else jnp.sign(grad)
    eps = dist / jnp.sqrt((t + 1).astype(x.dtype))
    s, moved = _step_search(s, predict_fn, x, labels, lo, hi, update, eps, live, budgets, cfg)
    s = dict(s, active=live & moved & (s['count'] < budgets[-1]), steps=s['steps'] + live)
    return t + 1, s

  _, s = jax.lax.while_loop(lambda c: jnp.any(c[1]['active']), iteration, (jnp.int32(0), s))
  final_ok = predict_fn(s['best_x'].reshape((-1,) + x.shape[1:])).reshape(nb, b) != labels[None]
  kept = jnp.isfinite(s['best_d'])
  success = kept & final_ok
  return {'distance': jnp.where(success, s['best_d'], jnp.inf), 'success': success,
          'adversarial': jnp.where(_b(success, s['best_x']), s['best_x'], x[None]),
          'no_start': ~ok, 'not_adversarial': kept & ~final_ok, 'queries': s['count'],
          'start_queries': count, 'steps': s['steps'], 'final': s['adv'],
          'final_distance': jnp.where(ok, distance(cfg.norm, s['adv'], x, lo, hi), jnp.inf)}


def median_at_budgets(distance: Any, success: Any) -> list[Any]:
  """Per budget, the median over successful images of ``distance`` [NB, N] (host NumPy); None where
  no image succeeded."""
  d, ok = np.asarray(distance, np.float64), np.asarray(success, bool)
  return [float(np.median(r[m])) if m.any() else None for r, m in zip(d, ok)]
