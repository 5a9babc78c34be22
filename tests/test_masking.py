"""Gradient-masking checks on hand-made robustness records: each check passes and fails."""
import copy
import json

import numpy as np
import pytest

from pixelreg_jax.attacks import masking as M

SETTINGS = {'norm': 'linf', 'steps': 10, 'restarts': 1, 'rel_step_size': 2.5, 'loss': 'ce', 'random_start': True}


def _entry(levels, acc, **settings):
  e = {'kind': 'curve', 'levels': list(map(float, levels)), 'accuracy': np.asarray(acc, float).tolist()}
  if settings:
    e['settings'] = {**SETTINGS, **settings}
  return e


def _record():
  """3 seeds, 1000 images. PGD L∞ = 0.9 − 3ε (0 at 0.3, zero spread over seeds), transferred FGSM
  0.9 − ε, uniform noise 0.9; 40 steps 0.0005 (half an image) higher than 10 steps, 5 restarts lower."""
  eps = np.linspace(0, 0.3, 10)
  fg = np.linspace(0, 0.5, 10)
  pgd = np.tile(np.clip(0.9 - 3 * eps, 0, 1), (3, 1))
  return {'clean_accuracy': [0.9] * 3, 'num_images': 1000, 'num_classes': 10, 'results': {
      'fgsm': _entry(fg, np.tile(0.9 - fg, (3, 1))),
      'uniform': _entry(fg, np.full((3, 10), 0.9)),
      'gaussian': _entry(fg, np.full((3, 10), 0.9)),
      'pgd_linf': _entry(eps, pgd, steps=10),
      'pgd_linf_steps40': _entry(eps, np.clip(pgd + 0.0005, 0, 1), steps=40),
      'pgd_linf_steps40_restarts5': _entry(eps, np.clip(pgd - 0.01, 0, 1), steps=40, restarts=5),
      'pgd_l2': _entry(eps * 10, np.tile(np.linspace(0.9, 0.5, 10), (3, 1)), norm='l2'),
      'boundary': {'kind': 'boundary', 'score': [0.01] * 3},          # not a curve: ignored
  }}


def _by_name(checks):
  return {c['check']: c for c in checks}


def test_a_consistent_record_passes_every_check_and_is_json():
  checks = M.gradient_masking_checks(_record())
  json.dumps(checks)
  names = set(_by_name(checks))
  assert {'pgd_below_transfer[pgd_linf]', 'pgd_below_noise[pgd_linf]', 'pgd_reaches_chance[pgd_linf]',
          'pgd_monotone[pgd_linf]', 'pgd_monotone[pgd_l2]', 'more_steps[pgd_linf -> pgd_linf_steps40]',
          'more_restarts[pgd_linf_steps40 -> pgd_linf_steps40_restarts5]',
          'more_steps_restarts[pgd_linf -> pgd_linf_steps40_restarts5]'} <= names
  assert not any('pgd_l2' in n and ('transfer' in n or 'noise' in n or 'chance' in n) for n in names)
  assert not any('more_' in n and 'pgd_l2' in n for n in names)       # different norms are not compared
  assert all(c['passed'] for c in checks), [c for c in checks if not c['passed']]
  assert M.all_passed(checks)


def test_pgd_above_transferred_fgsm_fails_at_the_interpolated_level():
  r = _record()
  fg = np.linspace(0, 0.5, 10)
  r['results']['fgsm']['accuracy'] = np.tile(0.9 - 4 * fg, (3, 1)).tolist()
  c = _by_name(M.gradient_masking_checks(r))['pgd_below_transfer[pgd_linf]']
  assert not c['passed']
  # FGSM levels inside PGD's grid [0, 0.3]: 0.0556·k, k ≤ 5. PGD(ε) − FGSM(ε) = ε > 1/1000 for k ≥ 1;
  # the largest excess is at ε = 5·0.5/9 = 0.2778 (PGD interpolated: 0.9 − 3·0.2778 = 0.0667).
  assert '0.0667' in c['detail'] and 'ε=0.2778' in c['detail'] and '5 of 6' in c['detail']


def test_pgd_above_uniform_noise_and_not_reaching_chance_fail():
  r = _record()
  r['results']['uniform']['accuracy'] = np.full((3, 10), 0.5).tolist()
  r['results']['pgd_linf']['accuracy'] = np.tile(np.linspace(0.9, 0.6, 10), (3, 1)).tolist()
  c = _by_name(M.gradient_masking_checks(r))
  assert not c['pgd_below_noise[pgd_linf]']['passed']
  assert not c['pgd_reaches_chance[pgd_linf]']['passed'] and '0.6000' in c['pgd_reaches_chance[pgd_linf]']['detail']
  assert c['pgd_below_transfer[pgd_linf]']['passed']                 # 0.9 − ε: equal to FGSM
  # The chance limit is 1/num_classes plus the margin.
  r['results']['pgd_linf']['accuracy'] = np.tile(np.linspace(0.9, 0.12, 10), (3, 1)).tolist()
  assert not _by_name(M.gradient_masking_checks(r))['pgd_reaches_chance[pgd_linf]']['passed']
  assert _by_name(M.gradient_masking_checks(r, final_margin=0.03))['pgd_reaches_chance[pgd_linf]']['passed']
  r['num_classes'] = 5
  assert _by_name(M.gradient_masking_checks(r))['pgd_reaches_chance[pgd_linf]']['passed']


def test_more_steps_or_restarts_must_not_raise_accuracy_beyond_one_image():
  r = _record()
  r['results']['pgd_linf_steps40']['accuracy'] = np.clip(
      np.asarray(r['results']['pgd_linf']['accuracy']) + 0.003, 0, 1).tolist()          # 3 images higher
  c = _by_name(M.gradient_masking_checks(r))
  assert not c['more_steps[pgd_linf -> pgd_linf_steps40]']['passed']
  r2 = copy.deepcopy(r)
  r2['num_images'] = 200                                  # now 0.003 is below one image (0.005)
  assert _by_name(M.gradient_masking_checks(r2))['more_steps[pgd_linf -> pgd_linf_steps40]']['passed']
  r['results']['pgd_linf_steps40_restarts5']['accuracy'] = np.clip(
      np.asarray(r['results']['pgd_linf_steps40']['accuracy']) + 0.01, 0, 1).tolist()
  c = _by_name(M.gradient_masking_checks(r))
  assert not c['more_restarts[pgd_linf_steps40 -> pgd_linf_steps40_restarts5]']['passed']
  assert not c['more_steps_restarts[pgd_linf -> pgd_linf_steps40_restarts5]']['passed']


def test_the_tolerance_grows_with_the_seed_spread_of_the_paired_difference():
  r = _record()
  base = np.asarray(r['results']['pgd_linf']['accuracy'])
  # Mean excess 0.01 with paired differences (+0.04, −0.02, +0.01): SEM = 0.0173 → tolerance 0.035 (z = 2).
  r['results']['pgd_linf_steps40']['accuracy'] = np.clip(base + np.array([[0.04], [-0.02], [0.01]]), 0, 1).tolist()
  r['results']['pgd_linf']['accuracy'] = base.tolist()
  key = 'more_steps[pgd_linf -> pgd_linf_steps40]'
  assert _by_name(M.gradient_masking_checks(r))[key]['passed']
  assert not _by_name(M.gradient_masking_checks(r, z=0.5))[key]['passed']   # 0.5·0.0173 < 0.01


def test_accuracy_rising_with_eps_fails_monotonicity():
  r = _record()
  acc = np.tile(np.linspace(0.5, 0.1, 10), (3, 1))
  acc[:, 6] = 0.45                                        # jumps up from 0.2333
  r['results']['pgd_l2']['accuracy'] = acc.tolist()
  c = _by_name(M.gradient_masking_checks(r))['pgd_monotone[pgd_l2]']
  assert not c['passed'] and '1 of 9' in c['detail']


def test_checks_without_their_curves_are_left_out():
  r = _record()
  del r['results']['fgsm'], r['results']['uniform']
  names = set(_by_name(M.gradient_masking_checks(r)))
  assert not any(n.startswith(('pgd_below_transfer', 'pgd_below_noise')) for n in names)
  assert M.gradient_masking_checks({'results': {'gaussian': _entry([0, 1], [[1, 0.5]])}}) == []
  # Only curves count: PGD-like settings on a result of another kind are not a PGD curve.
  other = {'results': {'x': dict(_entry([0, 1], [[1, 0.5]], steps=10), kind='boundary')}}
  assert M.pgd_attacks(other) == {} and M.gradient_masking_checks(other) == []


def test_compare_models_mean_sem_and_difference():
  a = _record()
  b = _record()
  a['results']['pgd_linf']['accuracy'] = [[0.5] * 10, [0.7] * 10]             # mean 0.6, SEM 0.1
  b['results']['pgd_linf']['accuracy'] = [[0.85] * 10] * 3                     # mean 0.85, SEM 0
  cmp = M.compare_models(a, b, ['pgd_linf'])
  c = cmp['pgd_linf']
  np.testing.assert_allclose(c['a']['mean'], 0.6)
  np.testing.assert_allclose(c['a']['sem'], 0.1)
  np.testing.assert_allclose(c['b']['sem'], 0.0, atol=1e-12)
  np.testing.assert_allclose(c['difference']['mean'], 0.25)
  np.testing.assert_allclose(c['difference']['sem'], 0.1)
  assert c['a']['n'] == 2 and c['b']['n'] == 3 and c['significant'] == [True] * 10    # 0.25 > 2·SEM
  json.dumps(cmp)
  # Default: every PGD attack both have; records in a list pool their seeds.
  pooled = M.compare_models([a, a], b)
  assert set(pooled) == {'pgd_linf', 'pgd_linf_steps40', 'pgd_linf_steps40_restarts5', 'pgd_l2'}
  assert pooled['pgd_linf']['a']['n'] == 4
  np.testing.assert_allclose(pooled['pgd_linf']['a']['sem'], np.sqrt(0.04 / 3) / 2)   # 0.5, 0.7, 0.5, 0.7
  table = M.comparison_markdown(cmp)
  assert '| pgd_linf | 0 | 60.0 ± 10.0 | 85.0 ± 0.0 | +25.0 ± 10.0 * |' in table
  b['results']['pgd_linf']['levels'] = [2 * v for v in b['results']['pgd_linf']['levels']]
  with pytest.raises(ValueError):
    M.compare_models(a, b, ['pgd_linf'])


# -- black-box checks -------------------------------------------------------------------------------

SQUARE = {'attack': 'square', 'n_queries': 1000, 'p_init': 0.8, 'loss': 'margin', 'redraw': True}


def _with_blackbox(square_acc, queries_acc, hsj_median, pgd_images=1000, square_images=1000):
  """``_record()`` with Square L∞ at ε 0, .1, .2, .3 (3 seeds), its queries curve at 0, 10, 100, 1000
  queries and HopSkipJump medians at budgets 1000, 5000, 25000 (3 seeds)."""
  r = _record()
  r['results']['pgd_linf']['num_images'] = pgd_images
  r['results']['square_linf'] = dict(_entry([0, 0.1, 0.2, 0.3], square_acc), settings=dict(SQUARE, lp='linf'),
                                     num_images=square_images)
  r['results']['square_linf_queries'] = dict(_entry([0, 10, 100, 1000], queries_acc),
                                             settings=dict(SQUARE, lp='linf', eps=0.3), num_images=square_images)
  r['results']['hopskipjump'] = {'kind': 'decision_distance', 'attack': 'hopskipjump', 'norm': 'l2',
                                 'budgets': [1000, 5000, 25000], 'num_images': 100, 'median': hsj_median}
  return r


GOOD = dict(square_acc=np.tile([0.9, 0.7, 0.5, 0.3], (3, 1)), queries_acc=np.tile([0.9, 0.8, 0.5, 0.3], (3, 1)),
            hsj_median=[[0.10, 0.08, 0.07], [0.11, 0.09, 0.08], [0.12, 0.08, 0.075]])


def test_blackbox_checks_pass_on_a_consistent_record_and_leave_other_norms_alone():
  checks = _by_name(M.gradient_masking_checks(_with_blackbox(**GOOD)))
  for name in ('pgd_below_blackbox[pgd_linf vs square_linf]', 'pgd_below_blackbox[pgd_linf_steps40 vs square_linf]',
               'more_queries[square_linf_queries]', 'more_queries[hopskipjump]'):
    assert checks[name]['passed'], checks[name]
  assert not any(n.startswith('pgd_below_blackbox[pgd_l2') for n in checks)   # Square L∞ is not compared to L2
  assert 'square' not in ' '.join(n for n in checks if n.startswith(('pgd_monotone', 'more_steps')))
  assert set(M.blackbox_attacks(_with_blackbox(**GOOD))) == {'square_linf', 'square_linf_queries', 'hopskipjump'}


def test_square_beating_pgd_fails_at_that_epsilon():
  """PGD L∞ is 0.9 − 3ε: 0.6 at ε = 0.1; Square 0.5 there (0.1 below: 100 images of 1000)."""
  bad = dict(GOOD, square_acc=np.tile([0.9, 0.5, 0.3, 0.0], (3, 1)))
  c = _by_name(M.gradient_masking_checks(_with_blackbox(**bad)))['pgd_below_blackbox[pgd_linf vs square_linf]']
  assert not c['passed'] and 'at ε=0.1' in c['detail'], c
  # One image of the smaller set is tolerated: 0.004 above PGD with 200 Square images (1/200 = 0.005) passes.
  near = dict(GOOD, square_acc=np.tile([0.9, 0.596, 0.296, 0.0], (3, 1)))
  key = 'pgd_below_blackbox[pgd_linf vs square_linf]'
  assert _by_name(M.gradient_masking_checks(_with_blackbox(**near, square_images=200)))[key]['passed']
  assert not _by_name(M.gradient_masking_checks(_with_blackbox(**near, square_images=1000)))[key]['passed']


def test_an_attack_weaker_after_more_queries_fails():
  bad_q = dict(GOOD, queries_acc=np.tile([0.9, 0.4, 0.3, 0.5], (3, 1)))    # 0.5 after the budget > 0.3 after 100
  c = _by_name(M.gradient_masking_checks(_with_blackbox(**bad_q)))['more_queries[square_linf_queries]']
  assert not c['passed'] and 'queries=100' in c['detail'], c
  bad_h = dict(GOOD, hsj_median=[[0.10, 0.08, 0.09], [0.11, 0.09, 0.10], [0.12, 0.08, 0.095]])
  c = _by_name(M.gradient_masking_checks(_with_blackbox(**bad_h)))['more_queries[hopskipjump]']
  assert not c['passed'] and 'budget=5000' in c['detail'], c


def test_hopskipjump_seeds_without_a_median_are_left_out_and_said():
  some = dict(GOOD, hsj_median=[[None, 0.08, 0.07], [0.11, 0.09, 0.08], [0.12, 0.08, 0.075]])
  c = _by_name(M.gradient_masking_checks(_with_blackbox(**some)))['more_queries[hopskipjump]']
  assert c['passed'] and '1 seed(s) without a success' in c['detail'], c
  none = dict(GOOD, hsj_median=[[None, None, 0.07]] * 3)
  assert 'more_queries[hopskipjump]' not in _by_name(M.gradient_masking_checks(_with_blackbox(**none)))


def test_a_record_with_only_blackbox_attacks_gets_its_checks_derived():
  from pixelreg_jax.evaluation import masking_checks
  r = _with_blackbox(**GOOD)
  r['results'] = {k: v for k, v in r['results'].items() if not k.startswith('pgd_')}
  derived = masking_checks.derive(r)
  assert derived and {c['check'] for c in derived['checks']} == {
      'more_queries[square_linf_queries]', 'more_queries[hopskipjump]'}
  assert masking_checks.derive({'results': {'gaussian': _entry([0, 1], [[1, 0.5]])}}) is None
