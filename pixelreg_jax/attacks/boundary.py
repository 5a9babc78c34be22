"""Decision-based Boundary attack (Brendel, Rauber & Bethge 2018), batched over images (docs/method.md §8).

Two protocols (``BoundaryConfig.protocol``); results must name the one that produced them:

  release  foolbox 3.3.4 ``BoundaryAttack(steps=50)`` as the paper's release runs it, one image at
           a time: start = ``LinearSearchBlendedUniformNoiseAttack(steps=50)`` (up to 1000 uniform
           draws in the bounds until one is misclassified, then the smallest adversarial blend
           (1 − ε)x + ε·noise on the grid ε = linspace(0, 1, 51)); each step ONE proposal
           (``_release_step``) kept if misclassified and closer; step sizes adapt only on full
           statistics queues (100 and 30 entries, appended every 10th step), so never within 50 steps.
  strong   several proposals per step, sizes adapted every 10 steps from the success rates of the
           last 10 steps, start = first adversarial uniform draw + bisection toward x.

Both see the model only through predicted labels, clip to explicit ``bounds`` (the release: min
and max over the whole test set), and batch over images without changing per-image semantics:
every image has its own noise draws (foolbox shares one Gaussian η across a batch; the release
runs batches of 1, so independent η per image is what it does). Images are in whatever space
``predict_fn`` takes; the attack is equivariant under a global positive affine map of that space,
so for 1-channel data (or one normalisation for all channels) attacking [0, 1] inputs equals the
release's attack on normalised inputs. With per-channel normalisation (CIFAR) the release's
Gaussian is isotropic in the normalised space: pass that space (and its bounds) to match it.

Only examples evaluated as misclassified are returned or scored: the returned batch is predicted
once more at the end; an image whose start was not adversarial (``no_start``; foolbox raises and
the release skips it) or whose final example is not (``not_adversarial``) has ``success`` False,
distance inf, and its clean image in ``adversarial``.

Distance: ‖(x̃ − x)/(hi − lo)‖²/D with D the elements of one image (H·W·C). For 1-channel images
this is the release's ‖δ‖²/D; for 3 channels the release measures channel 0 only
(``X[i][0]``, D = H·W): that is ``distance_channel0``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.errors import ConfigError

Array = jax.Array
PROTOCOLS = ('release', 'strong')

# foolbox 3.3.4 BoundaryAttack: statistics queue lengths and success-rate thresholds.
SPHERICAL_QUEUE, STEP_QUEUE = 100, 30
SPHERICAL_RATES = (0.2, 0.5)     # below: both sizes ÷ factor; above: both × factor
STEP_RATES = (0.1, 0.25)         # below: source step ÷ factor; above: × factor


@dataclasses.dataclass(frozen=True)
class BoundaryConfig:
  """Settings of ``boundary_attack``; the defaults are the release's (foolbox 3.3.4 defaults).

  Attributes:
    protocol: 'release' (foolbox as the release calls it) or 'strong' (see the module docstring).
    steps: attack steps (the release: 50).
    spherical_step, source_step: initial orthogonal step (relative to the distance) and step
      toward the original (fraction of the distance).
    step_adaptation: factor of the step-size adaptation.
    stats_every: release: spherical proposals are classified (and the queues appended) every
      this many steps (foolbox ``update_stats_every_k``); strong: steps between adaptations.
    init_tries: uniform-noise draws per image to find a start (foolbox ``directions``: 1000).
    blend_steps: release: the blend grid is linspace(0, 1, blend_steps + 1) (foolbox: 50).
    convergence: release: an image stops once its source step is below this (foolbox: 1e-7).
    candidates: strong: proposals per step and image.
    search_steps: strong: bisection steps from the noise toward x. 10 leaves the start within
      2⁻¹⁰ of the line from the boundary, far above float32 resolution (25 steps put starts so
      close that re-predicting them could give the original class).
  """
  protocol: str = 'release'
  steps: int = 50
  spherical_step: float = 0.01
  source_step: float = 0.01
  step_adaptation: float = 1.5
  stats_every: int = 10
  init_tries: int = 1000
  blend_steps: int = 50
  convergence: float = 1e-7
  candidates: int = 10
  search_steps: int = 10

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise ConfigError(f'boundary protocol {self.protocol!r} unknown; use one of {PROTOCOLS}')
    for name in ('steps', 'search_steps'):
      if getattr(self, name) < 0:
        raise ConfigError(f'boundary {name} must be >= 0 (got {getattr(self, name)})')
    for name in ('stats_every', 'init_tries', 'blend_steps', 'candidates'):
      if getattr(self, name) < 1:
        raise ConfigError(f'boundary {name} must be >= 1 (got {getattr(self, name)})')
    if not (self.spherical_step > 0 and self.source_step > 0 and self.step_adaptation > 1):
      raise ConfigError('boundary spherical_step and source_step must be > 0, step_adaptation > 1')


# ---------------------------------------------------------------------------------------
# Small helpers on batches [B, ...].
# ---------------------------------------------------------------------------------------


def _norm(v: Array) -> Array:
  """L2 norm of each image: [B, ...] -> [B]."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _bcast(v: Array, like: Array) -> Array:
  """[B] -> [B, 1, ...] matching ``like``'s rank."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _dot(a: Array, b: Array) -> Array:
  return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


# ---------------------------------------------------------------------------------------
# Start: first adversarial uniform draw per image.
# ---------------------------------------------------------------------------------------


def first_adversarial_draw(predict_fn: Callable[[Array], Array], key: Array, labels: Array,
                           draw_fn: Callable[[Array], Array], max_draws: int) -> tuple[Array, Array, Array]:
  """Each image's first random draw that ``predict_fn`` does not give its label.

  Every call to ``predict_fn`` fills a batch of B with the next draws of the images still
  searching (one each at first; several each once few remain), so the loop makes about
  Σ draws needed / B calls, not max_draws calls, when a few images need many draws. Each
  image's draws are independent of every other draw.

  Args:
    predict_fn: images [B, ...] -> labels [B].
    key: PRNG key.
    labels: [B] the labels to move away from.
    draw_fn: key -> B random images [B, ...].
    max_draws: draws per image at most (foolbox: 1000).

  Returns:
    found [B] bool; index [B] int32, the 0-based number of that draw (max_draws − 1 where none
    was adversarial); noise [B, ...] that draw (the last draw where none was, as foolbox).
  """
  b = labels.shape[0]
  slots = jnp.arange(b)

  def searching(state):
    _, next_j, first, _ = state
    return (first == max_draws) & (next_j < max_draws)

  def body(state):
    it, next_j, first, kept = state
    todo = searching(state)
    r = jnp.maximum(jnp.sum(todo), 1)
    idx = jnp.nonzero(todo, size=b, fill_value=0)[0]          # the images still searching
    img = idx[slots % r]                                       # slot -> image
    j = next_j[img] + slots // r                               # slot -> that image's draw number
    valid = j < max_draws
    noise = draw_fn(jax.random.fold_in(key, it))
    adv = valid & (predict_fn(noise) != labels[img])
    first = first.at[img].min(jnp.where(adv, j, max_draws))
    none = first[img] == max_draws
    keep = (adv & (j == first[img])) | (valid & none & (j == max_draws - 1))   # <= 1 slot per image
    slot = jnp.full(b, b).at[img].min(jnp.where(keep, slots, b))
    kept = jnp.where(_bcast(slot < b, kept), noise[jnp.minimum(slot, b - 1)], kept)
    return it + 1, next_j.at[img].add(valid.astype(jnp.int32)), first, kept

  like = jax.eval_shape(draw_fn, key)
  start = (jnp.int32(0), jnp.zeros(b, jnp.int32), jnp.full(b, max_draws, jnp.int32), jnp.zeros(like.shape, like.dtype))
  _, _, first, noise = jax.lax.while_loop(lambda s: jnp.any(searching(s)), body, start)
  found = first < max_draws
  return found, jnp.where(found, first, max_draws - 1), noise


def blend_search(predict_fn: Callable[[Array], Array], x: Array, noise: Array, labels: Array,
                 blend_steps: int) -> Array:
  """foolbox's linear search: the smallest ε of linspace(0, 1, blend_steps + 1) (float32) with
  (1 − ε)·x + ε·noise adversarial, 1 where none is. Stops once every image has one.

  Args: x, noise [B, ...]; labels [B]. Returns ε [B].
  """
  grid = jnp.asarray(np.linspace(0, 1, blend_steps + 1, dtype=np.float32))

  def body(state):
    g, best = state
    e = grid[g]
    adv = predict_fn((1 - e) * x + e * noise) != labels
    return g + 1, jnp.minimum(jnp.where(adv, e, 1.0), best)

  def cond(state):
    g, best = state
    return (g <= blend_steps) & ~jnp.all(best < 1)

  _, best = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.ones(x.shape[0], x.dtype)))
  return best


# ---------------------------------------------------------------------------------------
# Release protocol (foolbox 3.3.4 BoundaryAttack).
# ---------------------------------------------------------------------------------------


def release_proposal(eta: Array, x: Array, adv: Array, spherical: Array, source: Array, lo: Array,
                     hi: Array) -> tuple[Array, Array]:
  """foolbox's ``draw_proposals`` with one Gaussian per image.

  η (a standard normal draw per image) orthogonalised to the source direction u = (x − x̃)/d and scaled to spherical·d;
  spherical candidate x + (η − (x − x̃))/sqrt(spherical² + 1) clipped to [lo, hi]; then a step
  toward x of length source·d + ‖x − sph‖ − d (≥ 0), clipped.

  Args: eta, x, adv [B, ...]; spherical, source [B]; lo, hi broadcastable to x.
  Returns: (candidate, spherical candidate), [B, ...] each.
  """
  diff = x - adv
  d = _norm(diff)
  unit = diff / _bcast(jnp.maximum(d, 1e-30), x)
  eta = eta - _bcast(_dot(eta, unit), x) * unit
  eta = eta * _bcast(spherical * d / jnp.maximum(_norm(eta), 1e-30), x)
  sph = jnp.clip(x + (eta - diff) / _bcast(jnp.sqrt(jnp.square(spherical) + 1), x), lo, hi)
  to_x = x - sph
  n = _norm(to_x)
  length = jnp.maximum(source * d + n - d, 0) / jnp.maximum(n, 1e-30)
  return jnp.clip(sph + _bcast(length, x) * to_x, lo, hi), sph


def adapt_release_steps(q_spherical: Array, q_step: Array, spherical: Array, source: Array,
                        factor: float) -> tuple[Array, Array, Array, Array]:
  """foolbox 3.3.4's step-size rule, applied where a queue is full (no NaN in its column).

  Spherical queue success rate p > 0.5: both sizes × factor; p < 0.2: both ÷ factor; either way
  that column is cleared (NaN). Then the step queue: p > 0.25: source × factor; p < 0.1:
  ÷ factor; cleared likewise.

  Args: q_spherical [100, B], q_step [30, B] (1 adversarial, 0 not, NaN empty); sizes [B].
  Returns: (q_spherical, q_step, spherical, source) updated.
  """
  def rule(q, low, high):
    full = ~jnp.any(jnp.isnan(q), axis=0)
    p = jnp.nanmean(jnp.where(full[None], q, 0.0), axis=0)   # = the mean on full columns
    up, down = full & (p > high), full & (p < low)
    return jnp.where((up | down)[None], jnp.nan, q), jnp.where(up, factor, 1.0) / jnp.where(down, factor, 1.0)

  q_spherical, f = rule(q_spherical, *SPHERICAL_RATES)
  spherical, source = spherical * f, source * f
  q_step, f = rule(q_step, *STEP_RATES)
  return q_spherical, q_step, spherical, source * f


def _uniform_draw(x: Array, lo: Array, hi: Array) -> Callable[[Array], Array]:
  """key -> B uniform images in [lo, hi), [B, ...] like x."""
  return lambda k: jax.random.uniform(k, x.shape, x.dtype) * (hi - lo) + lo


def _release_run(predict_fn, key, x, labels, lo, hi, cfg: BoundaryConfig):
  """Start and steps of the release protocol. Returns (adv, start_ok, adv0, trace [steps, B], extras)."""
  b = x.shape[0]
  k_draw, k_steps = jax.random.split(key)
  _, index, noise = first_adversarial_draw(predict_fn, k_draw, labels, _uniform_draw(x, lo, hi), cfg.init_tries)
  eps = blend_search(predict_fn, x, noise, labels, cfg.blend_steps)
  e = _bcast(eps, x)
  adv0 = (1 - e) * x + e * noise
  start_ok = predict_fn(adv0) != labels      # foolbox re-checks the start and raises if not

  def step(carry, eta, check: bool):
    adv, sph, src, q_sph, q_step, n_stats, stopped = carry
    stopped = stopped | (src < cfg.convergence)            # foolbox stops this (batch-of-1) run
    d = _norm(x - adv)
    cand, sph_cand = release_proposal(eta, x, adv, sph, src, lo, hi)
    cand_adv = predict_fn(cand) != labels
    accept = cand_adv & (_norm(x - cand) < d) & ~stopped & start_ok
    adv = jnp.where(_bcast(accept, x), cand, adv)
    if check:
      sph_adv = predict_fn(sph_cand) != labels
      q_sph = q_sph.at[n_stats % SPHERICAL_QUEUE].set(sph_adv.astype(jnp.float32))
      q_step = q_step.at[n_stats % STEP_QUEUE].set(cand_adv.astype(jnp.float32))
      q_sph, q_step, sph_new, src_new = adapt_release_steps(q_sph, q_step, sph, src, cfg.step_adaptation)
      sph, src = jnp.where(stopped, sph, sph_new), jnp.where(stopped, src, src_new)
      n_stats = n_stats + 1
    return (adv, sph, src, q_sph, q_step, n_stats, stopped), _sq_dist(adv, x, lo, hi)

  def block(carry, first_step, length: int, check: bool):
    """Steps first_step .. first_step + length − 1 (the last checks if ``check``): one η draw."""
    eta = jax.random.normal(jax.random.fold_in(k_steps, first_step), (length,) + x.shape, x.dtype)
    n_plain = length - int(check)
    carry, tr = jax.lax.scan(lambda c, e: step(c, e, False), carry, eta[:n_plain])
    if check:
      carry, last = step(carry, eta[-1], True)
      tr = jnp.concatenate([tr, last[None]])
    return carry, tr

  every = cfg.stats_every
  blocks, rest = divmod(cfg.steps, every)
  carry = (adv0, jnp.full(b, cfg.spherical_step, x.dtype), jnp.full(b, cfg.source_step, x.dtype),
           jnp.full((SPHERICAL_QUEUE, b), jnp.nan, jnp.float32), jnp.full((STEP_QUEUE, b), jnp.nan, jnp.float32),
           jnp.int32(0), jnp.zeros(b, bool))
  carry, trace = jax.lax.scan(lambda c, t: block(c, t, every, True), carry, 1 + every * jnp.arange(blocks))
  trace = trace.reshape((blocks * every, b))
  if rest:       # steps after the last checking step (stats_every does not divide steps)
    carry, tr = block(carry, jnp.int32(1 + every * blocks), rest, False)
    trace = jnp.concatenate([trace, tr])
  adv, sph, src = carry[:3]
  return adv, start_ok, adv0, trace, {'blend': eps, 'start_draws': index + 1, 'spherical_step': sph,
                                       'source_step': src}


# ---------------------------------------------------------------------------------------
# Strong protocol.
# ---------------------------------------------------------------------------------------


def _strong_run(predict_fn, key, x, labels, lo, hi, cfg: BoundaryConfig):
  """Start (first adversarial draw + bisection) and multi-candidate steps. Same returns."""
  b, n = x.shape[0], cfg.candidates
  k_draw, k_steps = jax.random.split(key)
  found, index, noise = first_adversarial_draw(predict_fn, k_draw, labels, _uniform_draw(x, lo, hi), cfg.init_tries)

  def bisect(_, bounds):
    t_lo, t_hi = bounds   # x + t·(noise − x) is adversarial at t_hi, not (known) at t_lo.
    mid = (t_lo + t_hi) / 2
    adv = predict_fn(x + _bcast(mid, x) * (noise - x)) != labels
    return jnp.where(adv, t_lo, mid), jnp.where(adv, mid, t_hi)

  _, t_hi = jax.lax.fori_loop(0, cfg.search_steps, bisect, (jnp.zeros(b, x.dtype), jnp.ones(b, x.dtype)))
  adv0 = x + _bcast(t_hi, x) * (noise - x)
  start_ok = found & (predict_fn(adv0) != labels)
  predict_many = jax.vmap(predict_fn)      # [m, B, ...] -> [m, B]: each call sees a batch of B
  norms = jax.vmap(_norm)                  # [m, B, ...] -> [m, B]

  def step(carry, t):
    adv, delta, eps, orth_hits, step_hits, tries = carry
    diff = x - adv
    dist = _norm(diff)
    unit = diff / _bcast(jnp.maximum(dist, 1e-30), x)
    eta = jax.random.normal(jax.random.fold_in(k_steps, t), (n,) + x.shape, x.dtype)
    eta = eta - jax.vmap(lambda e: _bcast(_dot(e, unit), x) * unit)(eta)
    eta = eta * _bcast(delta * dist / jnp.maximum(norms(eta), 1e-30), eta)
    rel = adv[None] + eta - x[None]
    rel = rel * _bcast(dist / jnp.maximum(norms(rel), 1e-30), rel)
    spherical = jnp.clip(x[None] + rel, lo, hi)
    moved = spherical + _bcast(eps, x)[None] * (x[None] - spherical)
    preds = predict_many(jnp.concatenate([spherical, moved]))
    orth_adv, step_adv = preds[:n] != labels[None], preds[n:] != labels[None]
    new_dist = norms(moved - x[None])
    score = jnp.where(step_adv & (new_dist < dist[None]), new_dist, jnp.inf)
    best = jnp.argmin(score, axis=0)
    accept = jnp.isfinite(jnp.min(score, axis=0)) & start_ok
    chosen = jnp.take_along_axis(moved, _bcast(best, x)[None], axis=0)[0]
    adv = jnp.where(_bcast(accept, x), chosen, adv)
    orth_hits, step_hits, tries = orth_hits + orth_adv.sum(0), step_hits + step_adv.sum(0), tries + n
    adapt = t % cfg.stats_every == 0           # after every stats_every steps
    f = cfg.step_adaptation
    delta = jnp.where(adapt, jnp.where(orth_hits / tries > 0.5, delta * f, delta / f), delta)
    eps = jnp.where(adapt, jnp.minimum(jnp.where(step_hits / tries > 0.25, eps * f, eps / f), 0.9), eps)
    orth_hits, step_hits, tries = (jnp.where(adapt, 0.0, v) for v in (orth_hits, step_hits, tries))
    return (adv, delta, eps, orth_hits, step_hits, tries), _sq_dist(adv, x, lo, hi)

  zeros = jnp.zeros(b, jnp.float32)
  init = (adv0, jnp.full(b, cfg.spherical_step, x.dtype), jnp.full(b, cfg.source_step, x.dtype), zeros, zeros, zeros)
  (adv, delta, eps, *_), trace = jax.lax.scan(step, init, 1 + jnp.arange(cfg.steps))
  return adv, start_ok, adv0, trace, {'blend': t_hi, 'start_draws': jnp.where(found, index + 1, cfg.init_tries),
                                       'spherical_step': delta, 'source_step': eps}


# ---------------------------------------------------------------------------------------
# Entry point and scores.
# ---------------------------------------------------------------------------------------


def _sq_dist(adv: Array, x: Array, lo: Array, hi: Array, channel: Optional[int] = None) -> Array:
  """‖(x̃ − x)/(hi − lo)‖²/D per image: [B]; D = elements of one image (of one channel)."""
  u = (adv - x) / (hi - lo)
  if channel is not None:
    u = u[..., channel]
  return jnp.sum(jnp.square(u.reshape(u.shape[0], -1)), axis=1) / math.prod(u.shape[1:])


def finish(x: Array, adv: Array, start_ok: Array, final_adv: Array, lo: Array, hi: Array) -> dict[str, Array]:
  """The scored part of the output from the final re-check.

  Args:
    x, adv: [B, H, W, C] originals and final examples.
    start_ok: [B] the start was adversarial.
    final_adv: [B] the final example re-predicted ≠ label.
    lo, hi: the bounds.

  Returns:
    'adversarial' (x where not success), 'success', 'no_start', 'not_adversarial' [B] bool,
    'distance', 'distance_channel0' [B] (inf where not success).
  """
  success = start_ok & final_adv
  inf = jnp.full(x.shape[0], jnp.inf, x.dtype)
  return {'adversarial': jnp.where(_bcast(success, x), adv, x), 'success': success, 'no_start': ~start_ok,
          'not_adversarial': start_ok & ~final_adv,
          'distance': jnp.where(success, _sq_dist(adv, x, lo, hi), inf),
          'distance_channel0': jnp.where(success, _sq_dist(adv, x, lo, hi, channel=0), inf)}


def boundary_attack(predict_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                    cfg: BoundaryConfig = BoundaryConfig(), *, bounds: tuple[Any, Any]) -> dict[str, Array]:
  """Decision-based Boundary attack on a batch of images (jittable; ``cfg`` static).

  Args:
    predict_fn: images [B, H, W, C] -> predicted labels [B] (int), each image classified on its
      own (a model: while searching starts, a row may hold another image's noise draw). Always
      called on batches of B (strong: vmapped over its candidates, so each call sees B images).
    key: PRNG key (image i's draws depend on the key, B and i only).
    x: [B, H, W, C] originals.
    labels: [B] the labels to move away from (the release: the model's own predictions).
    cfg: settings (``protocol``).
    bounds: (lo, hi) scalars or arrays broadcastable to one image: the box every example is
      clipped to and the scale of the distance (the release: min and max over the test set).

  Returns:
    'adversarial' [B, H, W, C] (the clean image where not success); 'success' [B] (a start was
    found and the final example is re-predicted ≠ label); 'no_start' [B] (no adversarial start:
    foolbox raises, the release skips the image); 'not_adversarial' [B] (start found, final
    example re-predicted as the label: excluded); 'distance' [B] ‖(x̃ − x)/(hi − lo)‖²/(H·W·C),
    'distance_channel0' [B] the release's channel-0 measure (/(H·W)), both inf where not success;
    'distance_trace' [steps + 1, B] the distance after the start and after each step (inf where
    no start); 'blend' [B] start ε (release) or bisection t (strong); 'start_draws' [B] uniform
    draws used; 'spherical_step', 'source_step' [B] the final step sizes.
  """
  lo, hi = (jnp.asarray(v, x.dtype) for v in bounds)
  run = _release_run if cfg.protocol == 'release' else _strong_run
  adv, start_ok, adv0, trace, extras = run(predict_fn, key, x, labels, lo, hi, cfg)
  out = finish(x, adv, start_ok, predict_fn(adv) != labels, lo, hi)
  trace = jnp.concatenate([_sq_dist(adv0, x, lo, hi)[None], trace])
  out['distance_trace'] = jnp.where(start_ok[None], trace, jnp.inf)
  out.update(extras)
  return out


def release_score(distance: Any, success: Any, no_start: Any = None) -> dict[str, Any]:
  """The release's Boundary score from R repeats over the same N images (host NumPy).

  score = mean over repeats of the per-repeat median of ``distance`` over the successful
  images (the release's ``np.mean(all_medians)``); a repeat without any success has a NaN median
  and makes the score NaN, as in the release.

  Args:
    distance: [R, N] ‖δ‖²/D per repeat and image.
    success: [R, N] bool, the images to score.
    no_start: optional [R, N] bool, the images without a start (part of the excluded).

  Returns:
    {'score': float, 'median_per_repeat': [R], 'std_over_repeats': float (ddof 1; 0 for R = 1),
     'successful': [R] counts, 'excluded': [R] counts, and with ``no_start``: 'no_start' [R] and
     'not_adversarial' [R] counts (excluded with a start)}.
  """
  d = np.atleast_2d(np.asarray(distance, np.float64))
  ok = np.atleast_2d(np.asarray(success, bool))
  if d.shape != ok.shape:
    raise ValueError(f'distance {d.shape} and success {ok.shape} must both be [repeats, images]')
  medians = np.array([np.median(r[m]) if m.any() else np.nan for r, m in zip(d, ok)])
  out = {'score': float(np.mean(medians)), 'median_per_repeat': medians.tolist(),
         'std_over_repeats': float(np.std(medians, ddof=1)) if len(medians) > 1 else 0.0,
         'successful': ok.sum(1).tolist(), 'excluded': (~ok).sum(1).tolist()}
  if no_start is not None:
    ns = np.atleast_2d(np.asarray(no_start, bool))
    out['no_start'] = ns.sum(1).tolist()
    out['not_adversarial'] = (~ok & ~ns).sum(1).tolist()
  return out
