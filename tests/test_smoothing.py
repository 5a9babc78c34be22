"""Randomized smoothing (attacks/smoothing.py, evaluation/smoothing.py; docs/smoothing.md).

Independent references: the Clopper–Pearson bound against scipy's beta quantiles, the binomial
tail it is defined by and hand-computed cases; the radius against ``statistics.NormalDist``; the
JAX counts against a NumPy reimplementation with the same draws; a linear binary classifier whose
smoothed p_A = Φ(margin / (σ‖w‖)) is known in closed form, so its true certified radius is the
distance to the boundary.
"""
import json
import math
import statistics
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import errors, evaluation, jsonio
from pixelreg_jax.attacks import smoothing as sm
from pixelreg_jax.evaluation import registry, store
from pixelreg_jax.evaluation import smoothing as smoothing_kind  # registers 'smoothing' and kind 'certified'
from pixelreg_jax.trainer import create_trainer, train_loop

PHI_INV = statistics.NormalDist().inv_cdf


def linear_apply(params, x):
  """A linear model on flattened images: logits = x·W + b. x [M, H, W, C] -> [M, classes]."""
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b']


# -- the bound and the radius (host, scipy) ------------------------------------------------------


@pytest.mark.parametrize('alpha', [0.001, 0.05])
@pytest.mark.parametrize('n', [1, 10, 100, 1000])
def test_clopper_pearson_is_the_beta_quantile_and_the_binomial_tail(n, alpha):
  """beta.ppf(α, k, n − k + 1), and by its definition P(Bin(n, p) ≥ k) = α at p = the bound."""
  k = np.unique(np.linspace(0, n, 11).astype(int))
  p = sm.lower_confidence_bound(k, n, alpha)
  assert p[k == 0].tolist() == [0.0] * int(np.sum(k == 0))
  pos = k > 0
  np.testing.assert_allclose(p[pos], stats.beta.ppf(alpha, k[pos], n - k[pos] + 1), rtol=1e-12)
  np.testing.assert_allclose(stats.binom.sf(k[pos] - 1, n, p[pos]), alpha, rtol=1e-6)
  assert np.all(p <= k / n) and np.all(np.diff(p) > 0)


def test_clopper_pearson_hand_cases():
  """k = n: p^n = α, so α^(1/n); k = 1: 1 − (1 − p)^n = α; table values of the exact interval:
  9/10 has the two-sided 90% interval [0.6058, 0.9949], 10/20 the 95% interval [0.2720, 0.7280]."""
  assert sm.lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
  assert sm.lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.93325430, abs=1e-8)
  assert sm.lower_confidence_bound(1000, 1000, 0.001) == pytest.approx(math.exp(math.log(0.001) / 1000), rel=1e-12)
  assert sm.lower_confidence_bound(1, 50, 0.01) == pytest.approx(1 - 0.99 ** (1 / 50), rel=1e-9)
  assert sm.lower_confidence_bound(9, 10, 0.05) == pytest.approx(0.6058, abs=1e-4)
  assert sm.lower_confidence_bound(10, 20, 0.025) == pytest.approx(0.2720, abs=1e-4)
  assert sm.lower_confidence_bound(0, 20, 0.025) == 0.0


def test_radius_hand_cases_and_abstention():
  """R = σ·Φ⁻¹(p_A): p_A = Φ(1) gives σ, 0.975 gives 1.96σ; p_A ≤ 1/2 abstains (−1)."""
  r = sm.radius([0.8413447460685429, 0.975, 0.99, 0.5 + 1e-9, 0.5, 0.3, 0.0], 0.25)
  np.testing.assert_allclose(r[:4], [0.25, 0.25 * 1.959963984540054, 0.25 * PHI_INV(0.99),
                                     0.25 * PHI_INV(0.5 + 1e-9)], rtol=1e-9, atol=1e-12)
  assert r[3] > 0 and r[4:].tolist() == [-1.0, -1.0, -1.0]


def test_certify_selects_with_the_first_counts_and_abstains_at_half():
  """ĉ_A comes from the selection counts, k from the estimation counts; k/n = 1/2 (p_A < 1/2)
  abstains; a unanimous image of n = 100, α = 0.001 gets σ·Φ⁻¹(0.001^(1/100))."""
  counts0 = np.array([[1, 8, 1], [0, 0, 10], [10, 0, 0]])
  counts = np.array([[0, 100, 0], [60, 0, 40], [50, 50, 0]])
  c = sm.certify(counts0, counts, sigma=0.5, alpha=0.001)
  assert c['prediction'].tolist() == [1, -1, -1] and c['count'].tolist() == [100, 40, 50]
  assert c['radius'][0] == pytest.approx(0.5 * PHI_INV(0.001 ** (1 / 100)), rel=1e-9)
  assert c['radius'][1:].tolist() == [-1.0, -1.0] and c['p_lower'][2] < 0.5
  with pytest.raises(ValueError, match='totals'):
    sm.certify(counts0[:2], np.array([[0, 100, 0], [0, 99, 0]]), 0.5, 0.001)


def test_certified_accuracy_hand_cases():
  """Correct with R ≥ r: radii (wrong/abstain = −1) [−1, 0.1, 0.5, 1.0] at r = 0, 0.25, 0.5, 1, 2."""
  rc = sm.correct_radius([1, -1, 2, 0], [0.3, -1, 0.7, 0.2], [1, 0, 1, 0])
  assert rc.tolist() == [0.3, -1.0, -1.0, 0.2]
  np.testing.assert_allclose(sm.certified_accuracy([-1, 0.1, 0.5, 1.0], [0, 0.25, 0.5, 1, 2]),
                             [0.75, 0.5, 0.5, 0.25, 0.0])


# -- the JAX sampler ------------------------------------------------------------------------------


def numpy_counts(params, key, x, sigma, num, stream, first_index=0):
  """The counts [N, C] reimplemented: each draw as the module documents it, one at a time, the
  linear model in float64 NumPy."""
  w, b = np.asarray(params['w'], np.float64), np.asarray(params['b'], np.float64)
  out = np.zeros((len(x), w.shape[1]), np.int64)
  for i in range(len(x)):
    s_key = jax.random.fold_in(jax.random.fold_in(key, first_index + i), stream)
    z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(s_key, s), x.shape[1:])) for s in range(num)])
    noisy = (x[i][None] + np.float32(sigma) * z).astype(np.float32).astype(np.float64)
    pred = np.argmax(noisy.reshape(num, -1) @ w + b, -1)
    out[i] = np.bincount(pred, minlength=w.shape[1])
  return out


def test_counts_equal_a_numpy_reimplementation_whatever_the_chunking():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(16, 3)).astype(np.float32), 'b': np.float32([0.1, 0.0, -0.1])}
  x = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
  key = jax.random.PRNGKey(3)
  expect0 = numpy_counts(params, key, x, 0.5, 12, sm.SELECT)
  expect = numpy_counts(params, key, x, 0.5, 40, sm.ESTIMATE)
  for batch in (7, 200):   # 1 image × chunks of 7 (last one partly masked) / 5 images × 40 samples per call
    sampler = sm.make_sampler(linear_apply, 3, 12, 40, batch)
    c0, c = sm.sample(sampler, params, key, x, 0.5)
    np.testing.assert_array_equal(c0, expect0)
    np.testing.assert_array_equal(c, expect)
  # Image i keeps its draws whatever call it is in: images 2.. alone, indexed from 2.
  c0, c = sm.sample(sampler, params, key, x[2:], 0.5, first_index=2)
  np.testing.assert_array_equal(c, expect[2:])
  assert sampler.images_per_call == 5 and (sampler.chunk0, sampler.chunk) == (12, 40)


def _linear_binary(num_images, sigma, seed=0):
  """A linear binary classifier class = [w·x + b > 0] on 4×4 images and images at known distances
  d ∈ [0.02, 0.6] from its boundary, on either side; p_A = Φ(d/σ)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=16)
  w /= np.linalg.norm(w)
  base = rng.uniform(0.3, 0.7, size=(num_images, 16))
  side = np.where(np.arange(num_images) % 3 == 0, -1.0, 1.0)
  d = np.linspace(0.02, 0.6, num_images)
  x = base - np.outer(base @ w, w) + np.outer(side * d, w)   # margin w·x = side·d (b = 0, ‖w‖ = 1)
  params = {'w': np.stack([np.zeros(16), w], 1).astype(np.float32), 'b': np.zeros(2, np.float32)}
  labels = (side > 0).astype(int)
  return params, x.reshape(num_images, 4, 4, 1).astype(np.float32), labels, d, stats.norm.cdf(d / sigma)


def _check_linear_certificates(n, num_images, alpha, sigma, max_gap):
  params, x, labels, d, p_true = _linear_binary(num_images, sigma)
  sampler = sm.make_sampler(linear_apply, 2, 100, n, 4 * n)
  counts0, counts = sm.sample(sampler, params, jax.random.PRNGKey(1), x, sigma)
  # The estimate k/n of the true p_A: within 5 binomial SDs.
  k = counts[np.arange(num_images), labels]
  assert np.all(np.abs(k / n - p_true) <= 5 * np.sqrt(p_true * (1 - p_true) / n) + 1 / n)
  c = sm.certify(counts0, counts, sigma, alpha)
  certified = c['prediction'] >= 0
  assert np.all(c['prediction'][certified] == labels[certified])
  # Valid with probability ≥ 1 − α each: no more violations than a generous binomial quantile.
  violations = int(np.sum(c['radius'][certified] > d[certified] + 1e-9))
  assert violations <= stats.binom.ppf(1 - 1e-4, num_images, alpha), violations
  # Close: where the true p_A is clearly above 1/2 (and the n0 = 100 selection samples all but
  # surely pick the right class), the image is certified with R ≥ σΦ⁻¹(p − 6 SD).
  sd = np.sqrt(p_true * (1 - p_true) / n)
  clear = (p_true - 6 * sd > 0.5) & (stats.binom.cdf(50, 100, p_true) < 1e-6)
  assert np.sum(clear) >= num_images // 2
  assert np.all(certified[clear])
  assert np.all(c['radius'][clear] >= sigma * stats.norm.ppf(p_true[clear] - 6 * sd[clear]) - 1e-9)
  gap = d[clear] - c['radius'][clear]
  assert np.max(gap) <= max_gap, np.max(gap)
  return c


def test_linear_classifier_certificates_are_valid_and_tight():
  """n = 10 000: R ≤ the true distance d (at confidence 1 − α) and within 0.05 of it (σ = 0.25)."""
  _check_linear_certificates(n=10_000, num_images=60, alpha=0.01, sigma=0.25, max_gap=0.05)


@pytest.mark.slow
def test_linear_classifier_certificates_with_the_papers_n():
  """The paper's n = 100 000, α = 0.001: R ≤ d and within 0.02 of it."""
  _check_linear_certificates(n=100_000, num_images=200, alpha=0.001, sigma=0.25, max_gap=0.02)


# -- the evaluator and its kind -------------------------------------------------------------------


SMALL = {'smoothing.sigmas': '0.25,0.5', 'smoothing.radii': '0,0.1,0.3', 'smoothing.n0': 16,
         'smoothing.n': 64, 'smoothing.batch': 256, 'smoothing.images': 6, 'smoothing.alpha': 0.01}


def _fake_context(settings, seeds_params):
  """A Context of a linear 2-class 'run' of len(seeds_params) seeds on 4×4 uint8 images."""
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, size=(8, 4, 4, 1)).astype(np.uint8)
  labels = (images.reshape(8, -1).mean(1) > 127).astype(np.int32)
  run = types.SimpleNamespace(
      num_seeds=len(seeds_params), seed_variables=lambda k: seeds_params[k],
      logits_fn=lambda v: (lambda x: linear_apply(v, x)), model_input=lambda u8: u8.astype(jnp.float32) / 255)
  return evaluation.Context(run, images, labels, 0, (0.0, 1.0), jax.random.PRNGKey(0), settings)


def _params(scale):
  w = np.stack([-np.ones(16), np.ones(16)], 1) * scale / 16
  return {'w': w.astype(np.float32), 'b': np.float32([0.5 * scale, -0.5 * scale])}


def test_the_evaluator_records_every_seed_and_sigma():
  settings = evaluation.evaluation_config(SMALL)
  evaluation.validate(settings)
  smoothing_kind.check(settings, None)
  ctx = _fake_context(settings, [_params(8.0), _params(8.0), _params(2.0)])
  record = {'results': {}}
  registry.EVALUATORS['smoothing'](ctx, record, 'smoothing')
  r = record['results']['smoothing']
  assert (r['kind'], r['num_images'], r['n0'], r['n'], r['alpha']) == ('certified', 6, 16, 64, 0.01)
  assert r['sigmas'] == [0.25, 0.5] and r['radii'] == [0.0, 0.1, 0.3] and r['seconds'] > 0
  acc = np.asarray(r['certified_accuracy'])
  assert acc.shape == (3, 2, 3) and np.all(np.diff(acc, axis=-1) <= 0)
  np.testing.assert_array_equal(acc[0], acc[1])   # the same model sees the same draws
  # Seed 2, σ = 0.5 again by hand from the module's functions, with the evaluator's key.
  x = np.asarray(ctx.images[:6], np.float32) / 255
  sampler = sm.make_sampler(linear_apply, 2, 16, 64, 256)
  c = sm.certify(*sm.sample(sampler, _params(2.0), ctx.key_for('smoothing'), x, 0.5), 0.5, 0.01)
  rc = sm.correct_radius(c['prediction'], c['radius'], ctx.labels[:6])
  assert r['radius'][2][1] == [None if v < 0 else pytest.approx(v) for v in rc]
  np.testing.assert_allclose(acc[2, 1], sm.certified_accuracy(rc, [0, 0.1, 0.3]))
  assert r['abstained'][2][1] == int(np.sum(c['prediction'] < 0))
  back = json.loads(jsonio.dumps(record))['results']['smoothing']
  smoothing_kind.check_result('r', back, 3)
  assert evaluation.summary({'workdir': 'w', 'num_images': 8, 'results': record['results']}) == {
      'workdir': 'w', 'num_images': 8, 'smoothing_mean_certified_accuracy': pytest.approx(acc.mean())}


@pytest.mark.parametrize('field,value,message', [
    ('sigmas', '0.25,x', "eval.smoothing.sigmas='0.25,x': 'x' is not a number"),
    ('sigmas', '0,0.25', 'every σ must be positive'),
    ('sigmas', '', "eval.smoothing.sigmas='': '' is not a number"),
    ('radii', '0,0.5,0.25', 'radii must be non-negative and increasing'),
    ('radii', 'nan', "'nan' is not finite"),
    ('alpha', 1.5, 'eval.smoothing.alpha=1.5: must be a number in (0, 1)'),
    ('n', 0, 'eval.smoothing.n=0: must be at least 1'),
    ('batch', True, 'eval.smoothing.batch=True: an integer is needed'),
    ('images', -1, 'eval.smoothing.images=-1: must be at least 0'),
])
def test_bad_settings_are_one_line_config_errors(field, value, message):
  s = evaluation.evaluation_config()
  smoothing_kind.check(s, None)   # the defaults pass
  assert (s.smoothing.n0, s.smoothing.n, s.smoothing.alpha, smoothing_kind.sigmas(s)) == (100, 1000, 0.001,
                                                                                      [0.12, 0.25, 0.5])
  s.smoothing[field] = value
  with pytest.raises(errors.ConfigError) as e:
    smoothing_kind.check(s, None)
  assert message in str(e.value) and '\n' not in str(e.value)


def _result(acc, n=64, abstained=None):
  """A hand-made result of K seeds, 2 σ, 2 radii, 1 image."""
  return {'kind': 'certified', 'num_images': 1, 'n0': 16, 'n': n, 'alpha': 0.01, 'noise': smoothing_kind.NOISE,
          'sigmas': [0.25, 0.5], 'radii': [0.0, 0.5], 'certified_accuracy': acc,
          'radius': [[[0.7], [None]] for _ in acc], 'abstained': abstained or [[0, 1] for _ in acc]}


def test_the_kind_pools_seeds_refuses_other_settings_and_aggregates_mean_and_sem():
  a = _result([[[1.0, 1.0], [0.0, 0.0]]])
  b = _result([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]], abstained=[[0, 0], [0, 1]])
  pooled = smoothing_kind.pool('m', 'smoothing', [a, b])
  assert len(pooled['certified_accuracy']) == 3 and pooled['abstained'] == [[0, 1], [0, 0], [0, 1]]
  assert pooled['n'] == 64 and pooled['num_images'] == 1
  with pytest.raises(errors.ReportError, match="differ in the n of smoothing"):
    smoothing_kind.pool('m', 'smoothing', [a, _result([[[1.0, 1.0], [0.0, 0.0]]], n=128)])
  model = registry.Model('m', [], {'results': {'smoothing': pooled}}, {})
  smoothing_kind.aggregate('smoothing', model)
  e = model.entry['smoothing']
  assert e['seeds'] == 3 and e['n'] == 64 and e['radii'] == [0.0, 0.5]
  first = e['certified_accuracy'][0]   # σ = 0.25: r = 0 → [1, 1, 1]; r = 0.5 → [1, 0, 0]
  assert first['sigma'] == 0.25 and first['mean'] == pytest.approx([1.0, 1 / 3])
  assert first['sem'] == pytest.approx([0.0, math.sqrt(1 / 3) / math.sqrt(3)])
  assert e['certified_accuracy'][1]['abstained']['mean'] == pytest.approx(2 / 3)
  with pytest.raises(errors.ReportError, match='certified_accuracy'):
    smoothing_kind.check_result('r', a, 2)


def test_a_merge_keeps_the_result_with_its_own_settings():
  """``uses=('settings.smoothing',)``: another evaluator's new record keeps the old smoothing result
  and its settings (a record evaluated with n = 64 stays so labelled)."""
  ident = {'format': 2, 'workdir': '/w', 'dataset': 'd', 'seeds': [0], 'checkpoint': {}, 'num_images': 1,
           'first_image': 0}
  old_settings = evaluation.evaluation_config(SMALL).to_dict()
  old = dict(ident, settings=old_settings, evaluators=['smoothing'], results={'smoothing': _result([[[1.0, 1.0],
                                                                                                     [0.0, 0.0]]])})
  new = dict(ident, settings=evaluation.evaluation_config().to_dict(), evaluators=['gaussian'],
             results={'gaussian': {'kind': 'curve', 'levels': [0.0], 'accuracy': [[1.0]]}})
  merged = store.merge(old, new, 'out', lambda s: None)
  assert set(merged['results']) == {'smoothing', 'gaussian'}
  assert merged['settings']['smoothing'] == old_settings['smoothing']


@pytest.mark.slow
def test_evaluate_run_certifies_a_trained_run(tmp_path, monkeypatch):
  """``evaluate_run(…, ['smoothing'], …)`` on a tiny trained run of 2 seeds: shapes, the record's n,
  JSON, and the certified accuracy at radius 0 never above what the smoothed prediction allows."""
  host = synthetic_host_data(n_train=96, n_test=24)
  config = tiny_config(num_epochs=1, num_seeds=2)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  train_loop(create_trainer(config, host), str(tmp_path), log=lambda s: None)
  monkeypatch.setattr(evaluation.run.data_lib, 'load_split', lambda *a, **k: (host['test_x'], host['test_y']))
  settings = evaluation.evaluation_config(dict(SMALL, **{'smoothing.images': 0, 'smoothing.n': 100}))
  rec = evaluation.evaluate_run(str(tmp_path), ['smoothing'], settings, log=lambda s: None)
  r = rec['results']['smoothing']
  assert r['n'] == 100 and r['num_images'] == 24 and rec['settings']['smoothing']['n'] == 100
  assert np.asarray(r['certified_accuracy']).shape == (2, 2, 3)
  smoothing_kind.check_result('r', json.loads(jsonio.dumps(rec))['results']['smoothing'], 2)
  for k in range(2):
    for j in range(2):
      certified = [v for v in r['radius'][k][j] if v is not None]
      assert r['certified_accuracy'][k][j][0] == pytest.approx(len(certified) / 24)
