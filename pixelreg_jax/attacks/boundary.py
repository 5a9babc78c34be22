"""Decision-based Boundary attack (Brendel, Rauber & Bethge 2017), batched over images."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.attacks.levels import image_range

Array = jax.Array


# ---------------------------------------------------------------------------------------
# Boundary attack.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoundaryConfig:
  """Settings of ``boundary_attack`` (Brendel et al.'s reference defaults where they exist)."""
  steps: int = 50                # The release's 50 (more steps give smaller distances).
  candidates: int = 10           # Candidates per step and image.
  spherical_step: float = 0.01   # δ: orthogonal step, relative to the current distance.
  source_step: float = 0.01      # ε: fraction of the way toward the original.
  adapt_every: int = 10          # Steps between step-size adaptations.
  step_factor: float = 1.5
  init_tries: int = 50           # Uniform-noise draws to find a starting adversarial.
  search_steps: int = 25         # Bisection steps toward the original after the start.


def _flat_norm(v: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _bcast(v: Array, like: Array) -> Array:
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def boundary_attack(predict_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                    cfg: BoundaryConfig = BoundaryConfig()) -> dict[str, Array]:
  """Decision-based Boundary attack on a batch of images, queried only through labels.

  1. Start: uniform noise in each image's range, the first of ``init_tries`` draws that is
     classified ≠ label; bisection along the line to x lands just on the adversarial side.
  2. Each step, per image, ``candidates`` proposals: an orthogonal step (Gaussian noise
     orthogonal to x − x̃, of norm δ·d), re-projected onto the sphere of radius d around x and
     clipped to range, then a step of a fraction ε toward x. The closest adversarial proposal
     replaces x̃ (the distance never grows); otherwise x̃ stays.
  3. Every ``adapt_every`` steps, δ is multiplied by 1.5 if more than half of the orthogonal
     proposals were adversarial and divided otherwise; ε likewise around a quarter.

  Args:
    predict_fn: images [N,S,S,C] in [0,1] -> predicted labels [N] (int).
    key: PRNG key.
    x: [B,S,S,C] originals in [0, 1].
    labels: [B] the labels to move away from (the model's own predictions, per METHOD §7).
    cfg: settings.

  Returns:
    {'adversarial': [B,S,S,C], 'success': [B] bool (a start was found), 'distance': [B]
     ‖x̃ − x‖²/D (inf where no start was found), 'distance_trace': [steps + 1, B] the same
     after the start and after every step, 'is_adversarial': [B] bool of the result}.
  """
  b = x.shape[0]
  d_pixels = int(np.prod(x.shape[1:]))
  lo, hi = image_range(x)
  k_init, k_steps = jax.random.split(key)

  # 1. A starting adversarial from uniform noise, then bisection toward x.
  def try_init(carry, k):
    found, start = carry
    noise = jax.random.uniform(k, x.shape, x.dtype) * (hi - lo) + lo
    adv = predict_fn(noise) != labels
    take = adv & ~found
    return (found | adv, jnp.where(_bcast(take, x), noise, start)), None

  (found, start), _ = jax.lax.scan(try_init, (jnp.zeros(b, bool), x), jax.random.split(k_init, cfg.init_tries))

  def bisect(_, bounds):
    t_lo, t_hi = bounds   # x + t·(start − x) is adversarial at t_hi, not (known) at t_lo.
    mid = (t_lo + t_hi) / 2
    adv = predict_fn(x + _bcast(mid, x) * (start - x)) != labels
    return jnp.where(adv, t_lo, mid), jnp.where(adv, mid, t_hi)

  _, t_hi = jax.lax.fori_loop(0, cfg.search_steps, bisect, (jnp.zeros(b), jnp.ones(b)))
  adv0 = jnp.where(_bcast(found, x), x + _bcast(t_hi, x) * (start - x), x)

  # 2-3. Orthogonal + toward-source steps with adaptive sizes.
  n = cfg.candidates

  def step(carry, i):
    adv, delta, eps, orth_hits, step_hits, tries = carry
    k = jax.random.fold_in(k_steps, i)
    diff = x - adv                                           # toward the source
    dist = _flat_norm(diff)
    unit = diff / _bcast(jnp.maximum(dist, 1e-12), diff)
    eta = jax.random.normal(k, (n,) + x.shape, x.dtype)      # [n, B, ...]
    eta = eta - _proj(eta, unit) * unit[None]
    eta = eta * (delta * dist / jnp.maximum(_flat_norm(eta.reshape((n * b,) + x.shape[1:])).reshape(n, b), 1e-12)
                 ).reshape((n, b) + (1,) * (x.ndim - 1))
    cand = adv[None] + eta
    rel = cand - x[None]
    rel = rel * (dist / jnp.maximum(_norm_nb(rel), 1e-12)).reshape((n, b) + (1,) * (x.ndim - 1))
    spherical = jnp.clip(x[None] + rel, lo[None], hi[None])
    moved = spherical + _bcast(eps, x)[None] * (x[None] - spherical)
    labels_n = jnp.broadcast_to(labels, (n, b)).reshape(-1)
    both = jnp.concatenate([spherical.reshape((n * b,) + x.shape[1:]), moved.reshape((n * b,) + x.shape[1:])])
    preds = predict_fn(both)
    orth_adv = (preds[:n * b] != labels_n).reshape(n, b)
    step_adv = (preds[n * b:] != labels_n).reshape(n, b)
    new_dist = _norm_nb(moved - x[None])
    score = jnp.where(step_adv & (new_dist < dist[None]), new_dist, jnp.inf)
    best = jnp.argmin(score, axis=0)
    accept = jnp.isfinite(jnp.min(score, axis=0)) & found
    chosen = jnp.take_along_axis(moved, best.reshape((1, b) + (1,) * (x.ndim - 1)), axis=0)[0]
    adv = jnp.where(_bcast(accept, x), chosen, adv)
    orth_hits, step_hits, tries = orth_hits + orth_adv.sum(0), step_hits + step_adv.sum(0), tries + n
    adapt = (i + 1) % cfg.adapt_every == 0
    p_orth, p_step = orth_hits / tries, step_hits / tries
    f = cfg.step_factor
    delta = jnp.where(adapt, jnp.where(p_orth > 0.5, delta * f, delta / f), delta)
    eps = jnp.minimum(jnp.where(adapt, jnp.where(p_step > 0.25, eps * f, eps / f), eps), 0.9)
    zero = jnp.zeros_like(orth_hits)
    orth_hits, step_hits, tries = (jnp.where(adapt, zero, orth_hits), jnp.where(adapt, zero, step_hits),
                                   jnp.where(adapt, zero, tries))
    return (adv, delta, eps, orth_hits, step_hits, tries), sq_distance(adv)

  def sq_distance(adv):
    return jnp.where(found, jnp.sum(jnp.square((adv - x).reshape(b, -1)), axis=1) / d_pixels, jnp.inf)

  init = (adv0, jnp.full(b, cfg.spherical_step), jnp.full(b, cfg.source_step),
          jnp.zeros(b), jnp.zeros(b), jnp.zeros(b))
  (adv, *_), trace = jax.lax.scan(step, init, jnp.arange(cfg.steps))
  return {'adversarial': adv, 'success': found, 'distance': sq_distance(adv),
          'distance_trace': jnp.concatenate([sq_distance(adv0)[None], trace]),
          'is_adversarial': predict_fn(adv) != labels}


def _proj(eta: Array, unit: Array) -> Array:
  """⟨η_nb, u_b⟩ broadcast back: [n, B, ...] x [B, ...] -> [n, B, 1, ...]."""
  n, b = eta.shape[:2]
  dots = jnp.sum((eta * unit[None]).reshape(n, b, -1), axis=-1)
  return dots.reshape((n, b) + (1,) * (eta.ndim - 2))


def _norm_nb(v: Array) -> Array:
  """L2 norms of [n, B, ...] -> [n, B]."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], v.shape[1], -1)), axis=-1))
