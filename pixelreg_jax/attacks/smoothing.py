"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter 2019, ``CERTIFY``).

The smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I), of a base classifier f
(here: the argmax of a model's logits) is certified at x with radius R = σ·Φ⁻¹(p_A) when p_A is a
lower bound of P(f(x + δ) = c_A) above 1/2: no ‖x' − x‖₂ < R changes g's prediction.

``CERTIFY(f, σ, x, n0, n, α)``:
  1. n0 noise samples; ĉ_A = the class f predicts most often (selection);
  2. n further samples; k = how often f predicts ĉ_A (estimation);
  3. p_A = the one-sided Clopper–Pearson lower bound of k / n at confidence 1 − α,
     ``scipy.stats.beta.ppf(α, k, n − k + 1)`` (0 for k = 0);
  4. abstain if p_A ≤ 1/2, else predict ĉ_A with radius R = σ·Φ⁻¹(p_A) (``scipy.stats.norm.ppf``).
With probability at least 1 − α over the samples, a prediction is g(x) and R is a valid radius.

The noise is added in the [0, 1] input space at the images' native size, the space every attack
of the package works in (the model function adds any padding and the normalisation); it is not
clipped to [0, 1] (as in the paper: the base classifier is f on ℝ^D), so radii are L2 distances
in that space. The counts come from JAX (``make_sampler``: jitted, batched over images, the noise
samples drawn and classified in chunks so that n = 100 000 fits memory); the bound and the radius
are computed on the host with scipy (``lower_confidence_bound``, ``certify``).

Draws: image i of a call gets the key ``fold_in(key, i)``; its selection samples the stream
``fold_in(·, 0)``, its estimation samples ``fold_in(·, 1)``, and sample s of a stream is
``normal(fold_in(stream, s), image shape)`` (``noise``). The counts therefore depend neither on
how many images a call takes nor on the chunk size, only on the key and each image's index.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

SELECT, ESTIMATE = 0, 1   # the two sample streams of an image's key


def noise(stream: jax.Array, shape: tuple, start, count: int) -> jax.Array:
  """Standard normal samples start, …, start + count − 1 of ``stream``: [count, *shape] float32.

  Sample s is ``jax.random.normal(fold_in(stream, s), shape)``, so any chunking of a stream
  gives the same draws."""
  return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(stream, s), shape))(start + jnp.arange(count))


def stream_keys(key: jax.Array, indices: jax.Array, stream: int) -> jax.Array:
  """The keys [B] of sample stream ``stream`` (SELECT or ESTIMATE) of the images ``indices`` [B] (int)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), stream))(indices)


def class_counts(logits_fn: Callable, streams: jax.Array, x: jax.Array, sigma, num: int, chunk: int,
                 num_classes: int) -> jax.Array:
  """How often the base model predicts each class on ``num`` noisy copies of every image.

  Args:
    logits_fn: [M, H, W, C] images in [0, 1] -> logits [M, num_classes].
    streams: [B] keys, one sample stream per image (``stream_keys``).
    x: [B, H, W, C] images in [0, 1].
    sigma: the noise's standard deviation (a scalar; may be traced).
    num: samples per image; chunk: samples per image and model call (the call sees B·chunk images);
      the last chunk's samples beyond ``num`` are drawn and not counted.
    num_classes: C.

  Returns:
    int32 [B, num_classes]: counts of argmax f(x_b + σ·z) over samples s < num; each row sums to num.
  """
  b, shape = x.shape[0], x.shape[1:]

  def body(j, counts):
    start = j * chunk
    z = jax.vmap(lambda k: noise(k, shape, start, chunk))(streams)          # [B, chunk, H, W, C]
    noisy = (x[:, None] + sigma * z).reshape((b * chunk,) + shape)
    pred = jnp.argmax(logits_fn(noisy), -1).reshape(b, chunk)
    valid = (start + jnp.arange(chunk)) < num                                # [chunk]
    return counts + jnp.sum(jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * valid[None, :, None], axis=1)

  return jax.lax.fori_loop(0, -(-num // chunk), body, jnp.zeros((b, num_classes), jnp.int32))


@dataclasses.dataclass(frozen=True)
class Sampler:
  """The compiled counting program of one model function and sample sizes (``make_sampler``).

  Attributes:
    fn: ``(params, key, indices [B], x [B, H, W, C], sigma) -> (counts0 [B, C], counts [B, C])``,
      jitted: the selection counts (n0 samples) and the estimation counts (n samples) per image.
    images_per_call: B.
    n0, n: selection and estimation samples per image.
    chunk0, chunk: samples per image and model call in the two stages.
  """
  fn: Callable
  images_per_call: int
  n0: int
  n: int
  chunk0: int
  chunk: int


def make_sampler(apply: Callable, num_classes: int, n0: int, n: int, batch: int) -> Sampler:
  """The counting program of the base model ``apply(params, x [M, H, W, C]) -> logits [M, C]``.

  ``batch`` bounds the noisy images of one model call: chunk = min(batch, n) samples per image,
  B = max(1, batch // chunk) images per call, and min(chunk, n0) samples per image for selection.
  """
  chunk = max(1, min(batch, n))
  chunk0 = max(1, min(chunk, n0))
  images = max(1, batch // chunk)

  @jax.jit
  def fn(params, key, indices, x, sigma):
    logits_fn = lambda z: apply(params, z)  # noqa: E731
    counts0 = class_counts(logits_fn, stream_keys(key, indices, SELECT), x, sigma, n0, chunk0, num_classes)
    counts = class_counts(logits_fn, stream_keys(key, indices, ESTIMATE), x, sigma, n, chunk, num_classes)
    return counts0, counts

  return Sampler(fn, images, n0, n, chunk0, chunk)


def sample(sampler: Sampler, params: Any, key: jax.Array, x: np.ndarray, sigma: float,
           first_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Selection and estimation counts of every image: x [N, H, W, C] in [0, 1] (host or device array)
  -> (counts0 [N, C], counts [N, C]) int64 host arrays. Image i is keyed by ``first_index + i``;
  calls of ``sampler.images_per_call`` images, the last one zero-padded."""
  n_img, b = len(x), sampler.images_per_call
  out0, out = [], []
  for start in range(0, n_img, b):
    xb = np.asarray(x[start:start + b], np.float32)
    real = len(xb)
    if real < b:
      xb = np.concatenate([xb, np.zeros((b - real,) + xb.shape[1:], np.float32)])
    indices = jnp.arange(b, dtype=jnp.int32) + first_index + start
    c0, c = jax.device_get(sampler.fn(params, key, indices, xb, jnp.float32(sigma)))
    out0.append(np.asarray(c0[:real], np.int64))
    out.append(np.asarray(c[:real], np.int64))
  return np.concatenate(out0), np.concatenate(out)


# -- the host part: bound, radius, certified accuracy ------------------------------------------------


def lower_confidence_bound(k, n: int, alpha: float) -> np.ndarray:
  """One-sided Clopper–Pearson lower bound at confidence 1 − α of a binomial proportion with k
  successes in n trials: ``beta.ppf(α, k, n − k + 1)``, 0 for k = 0. k [...] int -> float64 [...]."""
  k = np.asarray(k, np.int64)
  with np.errstate(invalid='ignore'):
    p = stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
  return np.where(k > 0, p, 0.0).astype(np.float64)


def radius(p_lower, sigma: float) -> np.ndarray:
  """σ·Φ⁻¹(p_A) where p_A > 1/2, −1 (abstain) where p_A ≤ 1/2. p_lower [...] -> float64 [...]."""
  p = np.asarray(p_lower, np.float64)
  return np.where(p > 0.5, sigma * stats.norm.ppf(np.where(p > 0.5, p, 0.75)), -1.0)


def certify(counts0, counts, sigma: float, alpha: float) -> dict:
  """``CERTIFY`` from the two stages' counts [N, C] (each row of ``counts`` sums to n).

  Returns:
    {'prediction': [N] int64, ĉ_A or −1 (abstain); 'radius': [N] float64, R or −1 (abstain);
     'p_lower': [N] float64, p_A; 'count': [N] int64, k = counts[ĉ_A]}.
  """
  counts0, counts = np.asarray(counts0), np.asarray(counts)
  n = counts.sum(-1)
  if counts.size and not np.all(n == n.flat[0]):
    raise ValueError(f'the estimation counts differ in their totals: {sorted(set(n.tolist()))}')
  top = np.argmax(counts0, -1)   # ties: the lowest class
  k = np.take_along_axis(counts, top[:, None], -1)[:, 0]
  p = lower_confidence_bound(k, int(n.flat[0]) if counts.size else 0, alpha)
  r = radius(p, sigma)
  return {'prediction': np.where(r >= 0, top, -1).astype(np.int64), 'radius': r, 'p_lower': p,
          'count': k.astype(np.int64)}


def correct_radius(prediction, radius_, labels) -> np.ndarray:
  """The certified radius of every image where the smoothed prediction is its label, −1 where it
  abstains or is wrong: [N] float64."""
  return np.where(np.asarray(prediction) == np.asarray(labels), np.asarray(radius_, np.float64), -1.0)


def certified_accuracy(radii_correct, grid) -> np.ndarray:
  """Certified accuracy at each radius of ``grid`` [R]: the fraction of images correctly classified
  with a certified radius R ≥ r (``radii_correct`` [N], −1 for abstain or wrong) -> [R] float64."""
  rc = np.asarray(radii_correct, np.float64)
  return np.array([np.mean((rc >= 0) & (rc >= r)) if rc.size else 0.0 for r in np.asarray(grid, np.float64)])
