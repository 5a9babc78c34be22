"""Pixel-similarity targets, model similarity and the arctanh² similarity loss.

Everything here is a pure function of arrays (docs/method.md §1-3):

* ``pixel_similarity``  S^pixel = X Xᵀ of the centred, L2-normalised grayscale pixels.
* ``threshold_targets`` S^Th ∈ {-1, 0, +1} (eq. 3 of the paper), or S^pixel itself.
* ``similarity_loss``   mean (log(1+x+ε) − log(1−x+ε) − log(1+y+ε) + log(1−y+ε))²,
                        i.e. 4·(arctanh x − arctanh y)² with ε keeping ±1 finite.
* model similarity:     per-tap running-mean centring, cosine between the row and the
                        column image, softmax-weighted sum over the 5 taps.
* ``pair_indices``      the deterministic pair sampler over i < j (a keyed bijection of
                        the N(N-1)/2 pair ranks per pass; no list of pairs is ever built).
"""
from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp

Array = jax.Array

# ---------------------------------------------------------------------------------------
# Targets.
# ---------------------------------------------------------------------------------------


def grayscale(images: Array) -> Array:
  """[N, H, W] or [N, H, W, C] -> [N, H, W] float32, the mean over channels."""
  images = jnp.asarray(images, jnp.float32)
  chex.assert_rank(images, {3, 4})
  return images.mean(axis=-1) if images.ndim == 4 else images


def normalized_pixels(images: Array) -> Array:
  """Rows of unit norm after per-pixel centring over the N images.

  Args:
    images: [N, H, W] or [N, H, W, C]; any scale (cosines are scale- and offset-free).

  Returns:
    [N, D] float32, D = H·W. A row that is constant after centring stays all zero.
  """
  x = grayscale(images)
  x = x.reshape(x.shape[0], -1)
  x = x - x.mean(axis=0, keepdims=True)
  norm = jnp.linalg.norm(x, axis=1, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def pixel_similarity(images: Array) -> Array:
  """S^pixel, the [N, N] matrix of pixel cosine similarities (diagonal 1).

  Args:
    images: [N, H, W] or [N, H, W, C] regularization images at the task's image size.

  Returns:
    [N, N] float32. Computed at full float32 precision (no TF32/bf16 passes), since the
    thresholds compare it against values such as 0.8.
  """
  x = normalized_pixels(images)
  return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


def threshold_targets(s: Array, threshold) -> Array:
  """S^Th of eq. 3: +1 where s > Th, −1 where s < −Th, 0 otherwise.

  Args:
    s: similarities of any shape, in [-1, 1].
    threshold: Th in (0, 1), a number or a traced scalar (one per population member).
      ``None`` or ``0`` selects the un-thresholded target S^target = S^pixel (the paper's
      Fig-1 variant) and returns ``s`` unchanged.

  Returns:
    Same shape as ``s``, float32.
  """
  s = jnp.asarray(s, jnp.float32)
  if threshold is None:
    return s
  th = jnp.asarray(threshold, jnp.float32)
  thresholded = jnp.where(s > th, 1.0, jnp.where(s < -th, -1.0, 0.0)).astype(jnp.float32)
  return jnp.where(th == 0, s, thresholded)


def similarity_loss(model_sim: Array, target_sim: Array, eps: float = 1e-5) -> Array:
  """The release's arctanh² loss, averaged over pairs.

  mean((log(1+x+ε) − log(1−x+ε) − log(1+y+ε) + log(1−y+ε))²) with x = S^model, y = S^target.
  Equal to 4·(arctanh x − arctanh y)² for |x|, |y| < 1 and ε → 0; finite (value and
  gradient) at x, y = ±1.

  Args:
    model_sim: [P] model similarities in [-1, 1].
    target_sim: [P] targets in [-1, 1].
    eps: ε inside the logs.

  Returns:
    Scalar float32.
  """
  chex.assert_rank(model_sim, 1)
  chex.assert_equal_shape([model_sim, target_sim])
  x = model_sim.astype(jnp.float32)
  y = target_sim.astype(jnp.float32)

  def log_ratio(v):  # log(1 + v + ε) − log(1 − v + ε), evaluated as (1 ± v) + ε like the release.
    # (1 ± v) is exact near v = ∓1 (Sterbenz), so ε is not lost to rounding; the barrier keeps
    # XLA from reassociating it into v + (1 + ε), which would shift log(ε) by ~1e-4.
    one_plus, one_minus = jax.lax.optimization_barrier((1 + v, 1 - v))
    return jnp.log(one_plus + eps) - jnp.log(one_minus + eps)

  d = log_ratio(x) - log_ratio(y)
  return jnp.mean(jnp.square(d))


# ---------------------------------------------------------------------------------------
# Model similarity.
# ---------------------------------------------------------------------------------------


def update_running_mean(running: Array, feats_a: Array, feats_b: Array, beta: float) -> Array:
  """One step of the per-channel running mean of a tap.

  Args:
    running: [C] current running mean (starts at 0).
    feats_a, feats_b: [P, H, W, C] tap outputs of the row and the column images.
    beta: decay, 0.9 in the release.

  Returns:
    [C]: beta·running + (1 − beta)·mean over both batches and all positions, the batch
    mean taken under ``stop_gradient``.
  """
  chex.assert_equal_shape([feats_a, feats_b])
  chex.assert_shape(running, (feats_a.shape[-1],))
  both = jnp.concatenate([feats_a, feats_b], axis=0)
  batch_mean = jax.lax.stop_gradient(both.astype(jnp.float32).mean(axis=tuple(range(both.ndim - 1))))
  return beta * running + (1.0 - beta) * batch_mean


def cosine_similarity(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """Row-wise cosine of flattened features: [P, ...] x [P, ...] -> [P].

  a·b / (max(‖a‖, ε)·max(‖b‖, ε)); computed in float32.
  """
  a = a.reshape(a.shape[0], -1).astype(jnp.float32)
  b = b.reshape(b.shape[0], -1).astype(jnp.float32)
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return jnp.sum(a * b, axis=-1) / (na * nb)


def tap_similarities(taps_a: Sequence[Array], taps_b: Sequence[Array],
                     running_means: Sequence[Array]) -> Array:
  """Cosines per tap after subtracting each tap's running mean.

  Args:
    taps_a, taps_b: T feature maps each, [P, H_t, W_t, C_t].
    running_means: T vectors [C_t] (already updated for this step).

  Returns:
    [P, T] cosine similarities.
  """
  chex.assert_trees_all_equal_shapes(list(taps_a), list(taps_b))
  cos = [cosine_similarity(a - m.astype(a.dtype), b - m.astype(b.dtype))
         for a, b, m in zip(taps_a, taps_b, running_means)]
  return jnp.stack(cos, axis=1)


def combine_layers(cosines: Array, layer_weights: Array) -> Array:
  """S^model = Σ_t softmax(w)_t · cos_t: [P, T] x [T] -> [P]."""
  chex.assert_rank(cosines, 2)
  chex.assert_shape(layer_weights, (cosines.shape[1],))
  return cosines @ jax.nn.softmax(layer_weights.astype(jnp.float32))


# ---------------------------------------------------------------------------------------
# The pair sampler.
# ---------------------------------------------------------------------------------------

_FEISTEL_ROUNDS = 6


def num_pairs(n: int) -> int:
  """Number of unordered pairs i < j among n images."""
  return n * (n - 1) // 2


def _mix32(x: Array) -> Array:
  """A 32-bit integer hash (xor-shift-multiply), uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _feistel(x: Array, round_keys: Array, half_bits: int) -> Array:
  """A keyed bijection of [0, 4**half_bits): a balanced Feistel network on uint32."""
  mask = jnp.uint32((1 << half_bits) - 1)
  left, right = x >> half_bits, x & mask
  for r in range(_FEISTEL_ROUNDS):
    left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
  return (left << half_bits) | right


def _permute_index(pos: Array, key: Array, m: int) -> Array:
  """Position ``pos`` in [0, m) -> a pseudo-random rank in [0, m), bijective for a fixed key.

  Cycle-walking over the smallest Feistel domain 4**b ≥ m keeps the map a permutation of
  [0, m); each walk step is taken with probability < 3/4, so the loop is short.
  """
  half_bits = max(1, (max(m - 1, 1).bit_length() + 1) // 2)
  round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)
  first = _feistel(pos.astype(jnp.uint32), round_keys, half_bits)
  return jax.lax.while_loop(lambda v: v >= m, lambda v: _feistel(v, round_keys, half_bits), first)


def unrank_pair(rank: Array, n: int) -> tuple[Array, Array]:
  """Rank k in [0, n(n−1)/2) -> the pair (i, j), i < j, in the order (0,1), (0,2), (1,2), (0,3)…

  j is the largest integer with j(j−1)/2 ≤ k (a float estimate, then exact integer fix-ups),
  i = k − j(j−1)/2. Exact for n ≤ 65535.
  """
  del n  # The order does not depend on n; kept for symmetry with num_pairs.
  k = rank.astype(jnp.uint32)
  j = jnp.floor((1.0 + jnp.sqrt(1.0 + 8.0 * k.astype(jnp.float32))) / 2.0).astype(jnp.uint32)
  tri = lambda v: (v * (v - 1)) // 2  # noqa: E731
  j = jnp.where(tri(j) > k, j - 1, j)
  j = jnp.where(tri(j + 1) <= k, j + 1, j)
  i = k - tri(j)
  return i.astype(jnp.int32), j.astype(jnp.int32)


def pair_indices(key: Array, step: Array, pairs_per_step: int, n: int) -> tuple[Array, Array]:
  """The row and column image indices of one training step's pairs.

  The stream of pairs is pass 0, pass 1, … where each pass visits every pair i < j of the
  n regularization images exactly once, in an order given by a keyed bijection of the pair
  ranks (a fresh key per pass, so each pass is reshuffled). The stream depends only on
  ``key`` and the position, so a run can be resumed at any step, and nothing of size
  O(n²) is ever built.

  Args:
    key: PRNG key of the pair stream (one per seed).
    step: scalar int, the global training step.
    pairs_per_step: P, pairs drawn per step.
    n: number of regularization images (2 ≤ n ≤ 65535).

  Returns:
    (rows, cols): two [P] int32 arrays with rows < cols.
  """
  m = num_pairs(n)
  pos = jnp.asarray(step, jnp.uint32) * jnp.uint32(pairs_per_step) + jnp.arange(pairs_per_step, dtype=jnp.uint32)
  passes, offsets = pos // jnp.uint32(m), pos % jnp.uint32(m)
  ranks = jax.vmap(lambda p, o: _permute_index(o, jax.random.fold_in(key, p), m))(passes, offsets)
  return unrank_pair(ranks, n)
