"""The Boundary attack against analytic cases and hand-computed values (docs/method.md §8).

The classifiers are plain functions of each image (a model), written so the answers are known:
a linear classifier (distance to the boundary |w·x + c|/‖w‖), a "ball" classifier (everything
farther than r from every original is adversarial), a constant one, and one with a
constant-class region that holds all uniform noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from pixelreg_jax.attacks import boundary as B
from pixelreg_jax.errors import ConfigError

BOUNDS = (0.0, 1.0)


def _linear_case(b=12, s=8, seed=2):
  """Images [b, s, s, 1] in [0, 1] (range pixels 0 and 1) at known distances from w·z + c = 0.

  Returns (x, w, c, sq): sq [b] the squared distance to the boundary over D = s·s.
  """
  rng = np.random.default_rng(seed)
  d = s * s
  w = rng.normal(size=d)
  w[:2] = 0.0                                  # the range pixels do not matter
  x = rng.uniform(0.3, 0.7, (b, d))
  x[:, 0], x[:, 1] = 0.0, 1.0
  c = -float(np.mean(x @ w))
  margin = rng.uniform(0.05, 0.3, b) * np.linalg.norm(w) * rng.choice([-1, 1], b)
  x = x + ((margin - (x @ w + c)) / (w @ w))[:, None] * w[None]     # now w·x + c = margin
  assert x.min() >= 0 and x.max() <= 1
  return x.reshape(b, s, s, 1).astype(np.float32), w, c, (margin / np.linalg.norm(w)) ** 2 / d


def _linear_predict(w, c):
  wj = jnp.asarray(w, jnp.float32)
  return lambda z: (z.reshape(z.shape[0], -1) @ wj + c > 0).astype(jnp.int32)


def _np_linear_labels(z, w, c):
  return (np.asarray(z, np.float64).reshape(len(z), -1) @ w + c > 0).astype(np.int32)


def _np_adversarial(z, labels, w, c):
  """Re-predicted in float64: on the other side of w·z + c = 0 from ``labels``, or on the boundary
  within float32 rounding of w·z (where float32 evaluations may disagree)."""
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  margin = z @ w + c
  return ((margin > 0).astype(np.int32) != labels) | (np.abs(margin) < 1e-6 * (np.abs(z * w).sum(1) + abs(c)))


def _compile(fn, *args):
  """jit with XLA's cheap CPU backend passes: these small cases compile twice as fast, and
  compiling, not running, is what the attack costs here."""
  opts = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
  return jax.jit(fn).lower(*args).compile(opts)


def _run(predict, x, cfg, key=0):
  x = jnp.asarray(x)
  labels = predict(x)
  k = jax.random.PRNGKey(key)
  out = _compile(lambda k: B.boundary_attack(predict, k, x, labels, cfg, bounds=BOUNDS), k)(k)
  return jax.tree.map(np.asarray, out), np.asarray(labels)


def test_strong_protocol_approaches_the_analytic_distance_and_never_crosses_it():
  x, w, c, sq = _linear_case()
  out, labels = _run(_linear_predict(w, c), x, B.BoundaryConfig(protocol='strong', steps=400, candidates=10))
  got = out['distance']
  assert out['success'].all() and not out['no_start'].any() and not out['not_adversarial'].any()
  assert np.all(_np_adversarial(out['adversarial'], labels, w, c))
  assert np.all(got >= sq * (1 - 1e-3))          # never closer than the true boundary
  assert np.max(got / sq) < 1.02, got / sq      # 400 steps: within 2 % (seen: 0.2 %)
  trace = out['distance_trace']
  assert trace.shape == (401, len(x))
  assert np.all(np.diff(trace, axis=0) <= 1e-9)  # the distance never grows
  assert np.all(trace[-1] < 0.5 * trace[0])


def test_release_protocol_takes_single_steps_of_constant_size():
  x, w, c, sq = _linear_case()
  out, labels = _run(_linear_predict(w, c), x, B.BoundaryConfig())
  assert out['success'].all()
  assert np.all(_np_linear_labels(out['adversarial'], w, c) != labels)    # 50 steps: far from it
  np.testing.assert_array_equal(out['spherical_step'], np.float32(0.01))   # 50 steps: queues never full
  np.testing.assert_array_equal(out['source_step'], np.float32(0.01))
  trace = out['distance_trace']
  assert trace.shape == (51, len(x)) and np.all(np.diff(trace, axis=0) <= 1e-9)
  assert np.all(out['distance'] >= sq * (1 - 1e-3))
  # One proposal per step at source step 0.01: the distance shrinks at most by (1 − 0.01) a step
  # (‖δ‖ by 0.99, ‖δ‖² by 0.99²), so after 50 steps by at least 0.99¹⁰⁰ ≈ 0.366.
  assert np.all(trace[-1] >= trace[0] * 0.99 ** 100 * (1 - 1e-4))
  assert np.sum(trace[-1] < trace[0]) >= len(x) // 2     # a start just past the boundary may not move
  # The start is a blend on the grid linspace(0, 1, 51).
  np.testing.assert_allclose(out['blend'] * 50, np.round(out['blend'] * 50), atol=1e-4)


def _ball_predict(x, r):
  """Label 0 within r of an original, 1 elsewhere: every proposal is adversarial."""
  xs = jnp.asarray(x).reshape(len(x), -1)
  def predict(z):
    dist = jnp.sqrt(jnp.sum(jnp.square(z.reshape(z.shape[0], 1, -1) - xs[None]), -1))
    return (jnp.min(dist, 1) >= r).astype(jnp.int32)
  return predict


def test_release_step_sizes_adapt_only_on_full_queues_as_foolbox():
  x = _linear_case(b=4)[0]
  predict = _ball_predict(x, 1e-4)
  # Success rates are 1: any adaptation would show. 50 steps, statistics every 10th: queues of
  # 100 and 30 hold 5 entries, so foolbox never adapts.
  out, _ = _run(predict, x, B.BoundaryConfig(steps=50))
  assert out['success'].all()
  np.testing.assert_array_equal(out['spherical_step'], np.float32(0.01))
  np.testing.assert_array_equal(out['source_step'], np.float32(0.01))
  # Statistics every step, 100 steps: the step queue (30) fills at steps 30, 60, 90 (source ×1.5,
  # cleared each time); the spherical queue (100) at step 100: both ×1.5. By hand:
  # spherical 0.01·1.5, source 0.01·1.5⁴.
  out, _ = _run(predict, x, B.BoundaryConfig(steps=100, stats_every=1))
  assert out['success'].all()
  np.testing.assert_allclose(out['spherical_step'], 0.015, rtol=1e-6)
  np.testing.assert_allclose(out['source_step'], 0.01 * 1.5 ** 4, rtol=1e-6)


def test_adaptation_rule_thresholds_and_clearing():
  nan = np.nan
  # Columns: p = 0.6 (up), 0.1 (down), 0.3 (neither), not full (one NaN, others 1).
  q_sph = np.zeros((100, 4), np.float32)
  q_sph[:60, 0] = 1
  q_sph[:10, 1] = 1
  q_sph[:30, 2] = 1
  q_sph[:, 3] = 1
  q_sph[7, 3] = nan
  # Step queue columns: p = 0.3 (up), 0.0 (down), 0.2 (neither), full with p = 1 (up).
  q_step = np.zeros((30, 4), np.float32)
  q_step[:9, 0] = 1
  q_step[:6, 2] = 1
  q_step[:, 3] = 1
  sph, src = np.full(4, 0.01, np.float32), np.full(4, 0.02, np.float32)
  qs, qt, sph2, src2 = map(np.asarray, B.adapt_release_steps(jnp.asarray(q_sph), jnp.asarray(q_step),
                                                             jnp.asarray(sph), jnp.asarray(src), 1.5))
  np.testing.assert_allclose(sph2, [0.015, 0.01 / 1.5, 0.01, 0.01], rtol=1e-6)
  np.testing.assert_allclose(src2, [0.02 * 1.5 * 1.5, 0.02 / 1.5 / 1.5, 0.02, 0.02 * 1.5], rtol=1e-6)
  assert np.isnan(qs[:, :2]).all() and not np.isnan(qs[:, 2]).any() and np.isnan(qs[:, 3]).sum() == 1
  assert np.isnan(qt[:, [0, 1, 3]]).all() and not np.isnan(qt[:, 2]).any()
  # Boundaries are strict: p = 0.5 and 0.2 (spherical), 0.1 (3/30, step) change nothing, nor
  # does 7/30 < 0.25.
  q_sph = np.zeros((100, 2), np.float32)
  q_sph[:50, 0] = 1
  q_sph[:20, 1] = 1
  q_step = np.zeros((30, 2), np.float32)
  q_step[:3, 0] = 1
  q_step[:7, 1] = 1
  _, _, sph3, src3 = B.adapt_release_steps(jnp.asarray(q_sph), jnp.asarray(q_step), jnp.ones(2), jnp.ones(2), 1.5)
  np.testing.assert_array_equal(np.asarray(sph3), 1.0)
  np.testing.assert_array_equal(np.asarray(src3), 1.0)


def test_blend_search_finds_the_smallest_adversarial_grid_blend():
  x, w, c, _ = _linear_case(b=32, seed=5)
  predict = _linear_predict(w, c)
  labels = np.asarray(predict(jnp.asarray(x)))
  noise = np.random.default_rng(0).uniform(0, 1, x.shape).astype(np.float32)
  noise[:4] = x[:4]                                         # never adversarial: ε = 1
  eps = np.asarray(_compile(lambda a, n: B.blend_search(predict, a, n, labels, 50), x, noise)(x, noise))
  grid = np.linspace(0, 1, 51)
  x64, n64 = x.astype(np.float64).reshape(len(x), -1), noise.astype(np.float64).reshape(len(x), -1)
  margin = ((1 - grid[None, :, None]) * x64[:, None] + grid[None, :, None] * n64[:, None]) @ w + c   # [b, 51]
  adv = (margin > 0).astype(int) != labels[:, None]
  first = np.where(adv.any(1), grid[np.argmax(adv, axis=1)], 1.0)
  clear = np.abs(margin).min(1) > 1e-4 * np.abs(w).sum()     # no grid point within float32 error
  np.testing.assert_allclose(eps[clear], first[clear], atol=1e-7)
  assert clear.sum() >= 28 and np.all(eps[:4] == 1) and np.sum((eps > 0) & (eps < 1)) >= 10


def test_start_draw_counts_follow_the_geometric_law():
  """Noise is adversarial iff its first pixel is above 0.9: p = 0.1 a draw, independently. P(no
  start in 20 draws) = 0.9²⁰ and the draws used are geometric, per image, however many draws the
  other images need; the kept draw is the adversarial one (the last one where none is)."""
  n, tries, p = 3000, 20, 0.1
  labels = jnp.zeros(n, jnp.int32)
  predict = lambda z: (z[:, 0, 0, 0] > 1 - p).astype(jnp.int32)   # noqa: E731
  draw = lambda k: jax.random.uniform(k, (n, 2, 2, 1))             # noqa: E731
  key = jax.random.PRNGKey(0)
  found, index, noise = map(np.asarray, _compile(
      lambda k: B.first_adversarial_draw(predict, k, labels, draw, tries), key)(key))
  fail = ~found
  p_fail = (1 - p) ** tries
  assert abs(fail.mean() - p_fail) < 5 * np.sqrt(p_fail * (1 - p_fail) / n)
  np.testing.assert_array_equal(noise[:, 0, 0, 0] > 1 - p, found)
  assert np.all(index[fail] == tries - 1) and noise.min() >= 0 and noise.max() < 1
  k = np.arange(1, tries + 1)
  pk = p * (1 - p) ** (k - 1) / (1 - p_fail)                     # draws used, given a start
  mean, sd = (k * pk).sum(), np.sqrt((k ** 2 * pk).sum() - (k * pk).sum() ** 2)
  used = index[found] + 1
  assert abs(used.mean() - mean) < 5 * sd / np.sqrt(len(used))
  hist = np.bincount(used, minlength=tries + 1)[1:] / len(used)
  assert np.abs(hist - pk).max() < 0.03


@pytest.mark.parametrize('protocol', ['release', 'strong'])
def test_images_without_a_start_are_reported_and_excluded(protocol):
  """Class 0 wherever the mean is above 0.4 (all uniform noise); elsewhere linear (1 / 2). Bright
  images are class 0 and no draw or blend leaves it; the others are fooled by the first draw."""
  x, w, c, _ = _linear_case(b=8, seed=3)
  x[:3] = np.clip(x[:3] + 0.3, 0, 1)          # mean > 0.4: the constant-class region
  x[3:] *= 0.5                                # mean < 0.4
  lin = _linear_predict(w, c)
  predict = lambda z: jnp.where(z.reshape(z.shape[0], -1).mean(1) > 0.4, 0, 1 + lin(z))  # noqa: E731
  out, labels = _run(predict, x, B.BoundaryConfig(protocol=protocol, steps=3, init_tries=7))
  assert list(labels[:3]) == [0, 0, 0] and np.all(labels[3:] > 0)
  np.testing.assert_array_equal(out['no_start'], [True] * 3 + [False] * 5)
  np.testing.assert_array_equal(out['success'], ~out['no_start'])
  np.testing.assert_array_equal(out['start_draws'], [7] * 3 + [1] * 5)
  assert np.all(np.isinf(out['distance'][:3])) and np.all(np.isfinite(out['distance'][3:]))
  assert np.all(np.isinf(out['distance_trace'][:, :3]))
  np.testing.assert_array_equal(out['adversarial'][:3], x[:3])     # never a non-adversarial example
  score = B.release_score(out['distance'][None], out['success'][None], out['no_start'][None])
  assert score['no_start'] == [3] and score['not_adversarial'] == [0] and score['successful'] == [5]
  assert score['score'] == pytest.approx(float(np.median(out['distance'][3:])))


def test_an_example_that_fails_the_final_recheck_is_excluded_and_counted():
  """A host classifier (linear) that lies once: on its last call, the final re-check, it gives
  image 0 its label. Same key, so everything before is as in an honest run."""
  x, w, c, _ = _linear_case(b=6, seed=7)
  calls = {'n': 0, 'lie_at': None}

  def host(z):
    calls['n'] += 1
    pred = _np_linear_labels(z, w, c)
    if calls['n'] == calls['lie_at']:
      pred[0] = _np_linear_labels(x[:1], w, c)[0]
    return pred.astype(np.int32)

  def predict(z):
    return io_callback(host, jax.ShapeDtypeStruct((z.shape[0],), jnp.int32), z, ordered=True)

  xj = jnp.asarray(x)
  labels = jnp.asarray(_np_linear_labels(x, w, c))
  key = jax.random.PRNGKey(0)
  attack = _compile(lambda k: B.boundary_attack(predict, k, xj, labels, B.BoundaryConfig(steps=4), bounds=BOUNDS), key)
  honest = jax.tree.map(np.asarray, attack(key))
  calls.update(n=0, lie_at=calls['n'])           # the number of the last call
  lied = jax.tree.map(np.asarray, attack(key))
  assert honest['success'].all()
  np.testing.assert_array_equal(lied['success'], [False] + [True] * 5)
  np.testing.assert_array_equal(lied['not_adversarial'], [True] + [False] * 5)
  assert not lied['no_start'].any() and np.isinf(lied['distance'][0])
  np.testing.assert_array_equal(lied['adversarial'][0], x[0])
  np.testing.assert_array_equal(lied['distance'][1:], honest['distance'][1:])
  score = B.release_score(lied['distance'][None], lied['success'][None], lied['no_start'][None])
  assert score['not_adversarial'] == [1] and score['excluded'] == [1]


def test_release_score_by_hand():
  inf = np.inf
  distance = [[1.0, 2.0, 3.0, inf], [4.0, 100.0, 6.0, 8.0]]
  success = [[True, True, True, False], [True, False, True, True]]
  no_start = [[False, False, False, True], [False, False, False, False]]
  s = B.release_score(distance, success, no_start)
  assert s['median_per_repeat'] == [2.0, 6.0] and s['score'] == 4.0
  assert s['std_over_repeats'] == pytest.approx(np.sqrt(8.0))
  assert s['successful'] == [3, 3] and s['excluded'] == [1, 1]
  assert s['no_start'] == [1, 0] and s['not_adversarial'] == [0, 1]
  empty = B.release_score([[1.0, 2.0], [3.0, 4.0]], [[True, False], [False, False]])
  assert empty['median_per_repeat'][0] == 1.0 and np.isnan(empty['score'])   # as the release's np.mean


def test_config_errors_name_the_field():
  with pytest.raises(ConfigError, match='protocol'):
    B.BoundaryConfig(protocol='fast')
  with pytest.raises(ConfigError, match='init_tries'):
    B.BoundaryConfig(init_tries=0)


def test_the_channel0_distance_is_the_releases_rgb_statistic():
  """For RGB images the release scores channel 0 only: ‖(x̃ − x)[..., 0]/(hi − lo)‖² / (H·W),
  computed here in NumPy from the adversarial examples the attack returns."""
  x1, w1, c, _ = _linear_case(b=6)
  x = np.repeat(x1, 3, axis=-1)                    # [B, s, s, 3], the classifier reads all channels
  w = np.repeat(w1.reshape(8, 8, 1), 3, axis=-1).reshape(-1) / 3
  out, _ = _run(_linear_predict(w, c), x, B.BoundaryConfig(protocol='strong', steps=30, candidates=4))
  lo, hi = BOUNDS
  delta = (out['adversarial'].astype(np.float64) - x) / (hi - lo)
  ok = out['success']
  assert ok.any()
  np.testing.assert_allclose(out['distance_channel0'][ok], (delta[ok, ..., 0] ** 2).sum((1, 2)) / 64, rtol=1e-4)
  np.testing.assert_allclose(out['distance'][ok], (delta[ok] ** 2).sum((1, 2, 3)) / (64 * 3), rtol=1e-4)
