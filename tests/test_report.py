"""The report on hand-made robustness records: SEM over pooled seeds, the Boundary score, white-box
PGD with the gradient-masking checks, corruptions with the mCE, figures, strict JSON, the grid.
Every expected number is worked out by hand in the comments from the records below. Records of the
first format are upgraded on load: by hand, and the committed docs/results records reproduce the
committed summary."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_env
from pixelreg_jax import errors, jsonio, report
from pixelreg_jax.attacks import masking
from pixelreg_jax.report.figures import short_labels

LINF = {'norm': 'linf', 'steps': 10, 'restarts': 1, 'rel_step_size': 2.5, 'loss': 'ce', 'random_start': True}
EPS = [0.0, 0.1, 0.2, 0.3]
REG = 'regularized (α=4, Th=0.2, by mnist)'


def _curve(levels, rows, settings=None):
  e = {'kind': 'curve', 'levels': levels, 'accuracy': rows}
  if settings:
    e.update(settings=settings, num_images=100)
  return e


def _record(workdir, alpha, seeds, curves, boundary, corruptions, clean):
  """A record of the current format (evaluate writes it): identity at the top, every result in 'results'."""
  results = dict(curves, boundary=boundary, corruptions=corruptions)
  return {'format': 2, 'workdir': str(workdir), 'dataset': 'mnist', 'seeds': seeds, 'alpha': alpha, 'threshold': 0.2,
          'reg_dataset': 'mnist', 'num_images': 100, 'num_classes': 10, 'clean_accuracy': clean,
          'checkpoint': {'checkpoint_epoch': 3, 'best_epoch': [3] * len(seeds), 'fallback_reason': None},
          'results': {k: v for k, v in results.items() if v is not None}}


def _boundary(score, no_start, not_adversarial):
  return {'kind': 'boundary', 'protocol': 'release', 'steps': 50, 'repeats': 2, 'num_images': 50,
          'bounds': [0.0, 1.0], 'score': score, 'median_per_repeat': [[s, s] for s in score], 'no_start': no_start,
          'not_adversarial': not_adversarial,
          'successful': [[50 - a - b for a, b in zip(n, m)] for n, m in zip(no_start, not_adversarial)]}


def _corruptions(shot, stripe):
  return {'kind': 'corruptions', 'variant': 'mnist_c', 'num_images': 100,
          'severities': {'shot_noise': [1, 2], 'stripe': [1]}, 'accuracy': {'shot_noise': shot, 'stripe': stripe}}


def _records(tmp_path):
  """Unregularized: run a (seeds 0, 1) + run b (seed 2); regularized: one run of 3 seeds.

  Unregularized, per seed 0/1/2:
    gaussian [0.9, 0.5] / [0.8, 0.4] / [0.7, 0.3]     -> mean [0.8, 0.4], SEM 0.1/√3 at both levels
    pgd_linf        [0.9, 0.6|0.5|0.4, 0.2, 0.0]      -> all checks pass (0 at ε=0.3 ≤ chance 0.1)
    pgd_linf_steps40 = pgd_linf − 0.1 at ε = 0.1, 0.2 (never above pgd_linf)
    Boundary scores 0.01 / 0.02 / 0.03 -> 0.02 ± 0.01/√3; no start 1+0, 0+2, 1+1 = 5 and not adversarial
      0+1, 0, 0 = 1 of 2 repeats × 50 images × 3 seeds = 300
    shot_noise [0.8, 0.6] / [0.6, 0.4] / [0.7, 0.5]   -> errors per severity [0.3, 0.5], Σ 0.8
    stripe [0.9] / [0.7] / [0.8]                      -> error 0.2;  clean 0.92 / 0.90 / 0.88 -> error 0.1
  Regularized, every seed alike:
    pgd_linf [0.9, 0.6, 0.4, 0.3]  -> pgd_reaches_chance FAILS (0.3 > 0.1)
    pgd_linf_steps40 [0.9, 0.7, 0.5, 0.3]  -> more_steps FAILS (+0.1 > one image 0.01, SEM 0), and chance
    shot_noise [0.9, 0.7] -> errors [0.1, 0.3], CE = 0.4/0.8 = 0.5;  stripe [0.6] -> CE = 0.4/0.2 = 2
    mCE = 1.25;  clean 0.95 -> relative CE (0.05 + 0.25)/(0.2 + 0.4) = 0.5 and 0.35/0.1 = 3.5, mean 2
  """
  fgsm, uniform = [0.9, 0.8, 0.6, 0.4], [0.9] * 4
  base_pgd = {0: [0.9, 0.6, 0.2, 0.0], 1: [0.9, 0.5, 0.2, 0.0], 2: [0.9, 0.4, 0.2, 0.0]}

  def base_attacks(seeds):
    return {'gaussian': _curve([0.0, 0.5], [[0.9 - 0.1 * s, 0.5 - 0.1 * s] for s in seeds]),
            'fgsm': _curve(EPS, [fgsm] * len(seeds)), 'uniform': _curve(EPS, [uniform] * len(seeds)),
            'pgd_linf': _curve(EPS, [base_pgd[s] for s in seeds], LINF),
            'pgd_linf_steps40': _curve(EPS, [[0.9, base_pgd[s][1] - 0.1, 0.1, 0.0] for s in seeds],
                                       dict(LINF, steps=40))}

  dirs = []
  for name, seeds, score, no_start, not_adv, shot, stripe, clean in [
      ('a', [0, 1], [0.01, 0.02], [[1, 0], [0, 2]], [[0, 1], [0, 0]], [[0.8, 0.6], [0.6, 0.4]], [[0.9], [0.7]],
       [0.92, 0.90]),
      ('b', [2], [0.03], [[1, 1]], [[0, 0]], [[0.7, 0.5]], [[0.8]], [0.88])]:
    dirs.append(_record(tmp_path / name, 0.0, seeds, base_attacks(seeds), _boundary(score, no_start, not_adv),
                        _corruptions(shot, stripe), clean))
  reg = {'gaussian': _curve([0.0, 0.5], [[0.9, 0.7]] * 3), 'fgsm': _curve(EPS, [fgsm] * 3),
         'uniform': _curve(EPS, [uniform] * 3), 'pgd_linf': _curve(EPS, [[0.9, 0.6, 0.4, 0.3]] * 3, LINF),
         'pgd_linf_steps40': _curve(EPS, [[0.9, 0.7, 0.5, 0.3]] * 3, dict(LINF, steps=40))}
  dirs.append(_record(tmp_path / 'reg', 4.0, [0, 1, 2], reg, _boundary([0.04, 0.05, 0.06], [[0, 0]] * 3,
                                                                       [[0, 0]] * 3),
                      _corruptions([[0.9, 0.7]] * 3, [[0.6]] * 3), [0.95] * 3))
  return dirs


def _write(records):
  out = []
  for r in records:
    d = r['workdir']
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'robustness.json'), 'w') as f:
      json.dump(r, f)
    out.append(d)
  return out


def _strict_load(path):
  def refuse(constant):
    raise ValueError(f'{path} is not strict JSON: {constant}')
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('report')
  dirs = _write(_records(tmp))
  agg = report.write_report(dirs, str(tmp / 'out'), title='hand-made')
  return tmp / 'out', agg


def _masking_rows(md, label):
  """{check: result cell} of the gradient-masking table of model ``label``, and its verdict line."""
  section = md.split('## Gradient-masking checks')[1].split('\n## ')[0]
  block = section.split(f'**{label}** (n=')[1].split('\n**')[0]
  rows = {}
  for line in block.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if line.startswith('| `'):
      rows[cells[0].strip('`')] = cells[1]
  return rows, block.splitlines()[0]


def test_seeds_of_a_models_runs_pool_into_mean_and_sem(written):
  out, agg = written
  base = agg['unregularized']
  assert base['n'] == 3 and len(base['workdirs']) == 2
  g = base['attacks']['gaussian']
  assert g['mean'] == pytest.approx([0.8, 0.4]) and g['sem'] == pytest.approx([0.1 / math.sqrt(3)] * 2)
  assert base['clean_accuracy']['mean'] == pytest.approx(0.9)
  assert base['clean_accuracy']['sem'] == pytest.approx(0.02 / math.sqrt(3))
  assert agg[REG]['attacks']['gaussian']['sem'] == pytest.approx([0.0, 0.0])
  assert agg[REG]['attacks']['pgd_linf']['settings'] == LINF
  md = (out / 'robustness.md').read_text()
  assert '| unregularized | 3 | 0.800 ± 0.058 | 0.400 ± 0.058 |' in md


def test_mean_sem_by_hand():
  """The one mean_sem (attacks.masking) the report uses."""
  m, s = masking.mean_sem(np.array([[0.5, 1.0], [0.7, 1.0], [0.9, 1.0]]))
  np.testing.assert_allclose(m, [0.7, 1.0])
  np.testing.assert_allclose(s, [0.2 / np.sqrt(3), 0.0])      # std(ddof=1) = 0.2
  np.testing.assert_allclose(masking.mean_sem(np.array([[0.4, 0.6]]))[1], [0, 0])   # one sample: SEM 0
  assert not hasattr(report, 'mean_sem')


def test_boundary_score_is_the_seed_mean_with_its_exclusions(written):
  out, agg = written
  b = agg['unregularized']['boundary']
  assert b['score']['mean'] == pytest.approx(0.02) and b['score']['sem'] == pytest.approx(0.01 / math.sqrt(3))
  assert (b['protocol'], b['steps'], b['repeats'], b['num_images']) == ('release', 50, 2, 50)
  assert (b['no_start'], b['not_adversarial'], b['attacked']) == (5, 1, 300)
  assert b['no_start_per_seed'] == [1, 2, 2] and b['not_adversarial_per_seed'] == [1, 0, 0]
  assert agg[REG]['boundary']['score']['mean'] == pytest.approx(0.05)
  md = (out / 'robustness.md').read_text()
  assert '| unregularized | 3 | 2.000e-02 ± 5.8e-03 | release | 50 | 50 × 2 | 5 of 300 | 1 of 300 |' in md


def test_mean_corruption_error_against_the_unregularized_model(written):
  out, agg = written
  c = agg[REG]['corruptions']
  assert c['accuracy']['shot_noise']['mean'] == pytest.approx(0.8)
  assert c['accuracy']['shot_noise']['per_severity']['mean'] == pytest.approx([0.9, 0.7])
  base = agg['unregularized']['corruptions']
  assert base['accuracy']['shot_noise']['mean'] == pytest.approx(0.6)               # (0.7 + 0.5 + 0.6)/3
  assert base['accuracy']['shot_noise']['sem'] == pytest.approx(0.1 / math.sqrt(3))
  assert base['accuracy']['shot_noise']['per_severity']['mean'] == pytest.approx([0.7, 0.5])
  e = c['errors']
  assert e['baseline'] == 'unregularized'
  assert e['ce'] == pytest.approx({'shot_noise': 0.5, 'stripe': 2.0}) and e['mce'] == pytest.approx(1.25)
  assert e['relative_ce'] == pytest.approx({'shot_noise': 0.5, 'stripe': 3.5})
  assert e['relative_mce'] == pytest.approx(2.0)
  assert base['errors']['mce'] == pytest.approx(1.0)
  md = (out / 'robustness.md').read_text()
  assert '| **mCE** | **1.000** | **1.250** |' in md and '| **relative mCE** | 1.000 | 2.000 |' in md
  assert '| shot noise | 1–2 | 0.600 ± 0.058 | 0.800 ± 0.000 |' in md
  summary = _strict_load(out / 'summary.json')
  assert summary[REG]['corruptions']['errors']['mce'] == pytest.approx(1.25)


def test_failed_masking_checks_are_shown_as_failed(written):
  out, agg = written
  md = (out / 'robustness.md').read_text()
  failing = {'pgd_reaches_chance[pgd_linf]', 'pgd_reaches_chance[pgd_linf_steps40]',
             'more_steps[pgd_linf -> pgd_linf_steps40]'}
  rows, verdict = _masking_rows(md, REG)
  assert len(rows) == 9          # per L∞ variant: transfer, noise, chance, monotone; and more_steps
  assert {c for c, r in rows.items() if r == '**FAILED**'} == failing
  assert all(r == 'passed' for c, r in rows.items() if c not in failing)
  assert '**3 of 9 checks FAILED**' in verdict
  base_rows, base_verdict = _masking_rows(md, 'unregularized')
  assert set(base_rows.values()) == {'passed'} and 'all 9 checks passed' in base_verdict
  assert 'also passes in each of the 2 runs alone' in md
  summary = _strict_load(out / 'summary.json')
  assert {c['check'] for c in summary[REG]['gradient_masking_checks'] if not c['passed']} == failing


def test_whitebox_tables_and_the_comparison_with_the_baseline(written):
  out, agg = written
  md = (out / 'robustness.md').read_text()
  assert '**White-box PGD L∞ ε, 10 steps** (`pgd_linf`, 100 images)' in md
  assert '**White-box PGD L∞ ε, 40 steps** (`pgd_linf_steps40`, 100 images)' in md
  cmp = agg[REG]['whitebox_vs_baseline']
  assert cmp['baseline'] == 'unregularized' and set(cmp['comparison']) == {'pgd_linf', 'pgd_linf_steps40'}
  # pgd_linf at ε=0.1: 60 % vs 50 ± 10/√3 %: difference +10.0 ± 5.8, under 2 SEM (no star).
  assert '| pgd_linf | 0.1 | 50.0 ± 5.8 | 60.0 ± 0.0 | +10.0 ± 5.8 |' in md
  # ε=0.2: 40 % vs 20 % with no spread: +20.0 ± 0.0, significant.
  assert '| pgd_linf | 0.2 | 20.0 ± 0.0 | 40.0 ± 0.0 | +20.0 ± 0.0 * |' in md
  assert 'whitebox_vs_baseline' not in agg['unregularized']


def test_figures_are_written(written):
  out, _ = written
  for name in ('robustness.png', 'robustness_whitebox.png', 'robustness_corruptions.png'):
    png = (out / name).read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10000, name


def test_undefined_score_is_null_and_stale_figures_go(written, tmp_path):
  out, _ = written
  shutil.copytree(out, tmp_path / 'out')
  rec = _record(tmp_path / 'r', 0.0, [0, 1], {'gaussian': _curve([0.0, 0.5], [[0.9, 0.5], [0.8, 0.4]])},
                _boundary([0.01, float('nan')], [[0, 0], [0, 0]], [[0, 0], [0, 0]]), None, [0.9, 0.8])
  agg = report.write_report(_write([rec]), str(tmp_path / 'out'))
  b = agg['unregularized']['boundary']
  assert b['score'] == {'mean': None, 'sem': None} and b['seeds_without_score'] == 1
  summary = _strict_load(tmp_path / 'out' / 'summary.json')
  assert summary['unregularized']['boundary']['score_per_seed'] == [0.01, None]
  assert not (tmp_path / 'out' / 'robustness_whitebox.png').exists()
  assert not (tmp_path / 'out' / 'robustness_corruptions.png').exists()
  assert (tmp_path / 'out' / 'robustness.png').stat().st_size > 10000
  md = (tmp_path / 'out' / 'robustness.md').read_text()
  assert '| unregularized | 2 | – | release |' in md and 'unregularized (1 of 2 seeds)' in md


def test_old_boundary_records_are_refused_in_one_line(tmp_path):
  rec = {'workdir': str(tmp_path / 'old'), 'dataset': 'mnist', 'seeds': [0], 'alpha': 0.0, 'threshold': 0.2,
         'reg_dataset': 'mnist', 'num_images': 100, 'clean_accuracy': [0.9], 'attacks': {},
         'boundary': {'steps': 50, 'median_distance': [0.01], 'failed_starts': [0]}}
  with pytest.raises(errors.ReportError) as e:
    report.load_records(_write([rec]))
  assert 'median_distance' in str(e.value) and 'evaluate' in str(e.value) and '\n' not in str(e.value)


def test_runs_evaluated_differently_are_not_pooled(tmp_path):
  a, b = _records(tmp_path)[:2]
  b['results']['boundary']['protocol'] = 'strong'
  with pytest.raises(errors.ReportError, match='Boundary protocol'):
    report.aggregate(report.load_records(_write([a, b])))
  b['results']['boundary']['protocol'] = 'release'
  b['results']['pgd_linf']['settings'] = dict(LINF, restarts=2)
  with pytest.raises(errors.ReportError, match='settings of pgd_linf'):
    report.aggregate([a, b])
  b['results']['pgd_linf'] = dict(a['results']['pgd_linf'], kind='boundary')
  with pytest.raises(errors.ReportError, match='the kind of pgd_linf'):
    report.aggregate([a, b])


def test_unknown_kinds_and_newer_formats_are_one_line(tmp_path):
  a = _records(tmp_path)[0]
  a['results']['square'] = {'kind': 'query_curve', 'levels': [0.1], 'accuracy': [[0.5], [0.5]]}
  with pytest.raises(errors.ReportError, match="kind 'query_curve', which this version does not know"):
    report.aggregate([a])
  with pytest.raises(errors.ReportError, match='record format 3') as e:
    report.upgrade(dict(a, format=3), 'x/robustness.json')
  assert '\n' not in str(e.value)


def test_baseline_choice(tmp_path):
  a, b, reg = _records(tmp_path)
  agg = report.aggregate([a, b, reg], labels=['base 1', 'base 2', 'reg'])     # two α=0 models: no baseline
  assert not any(e.get('is_baseline') or 'errors' in e['corruptions'] for e in agg.values())
  assert 'No baseline (2 models of α=0 runs)' in report.markdown_report(agg)
  agg = report.aggregate([a, b, reg], labels=['base 1', 'base 2', 'reg'], baseline='base 2')
  # Against seed 2 alone: shot noise errors [0.3, 0.5] again, stripe 0.2: the same CE as against the pool.
  assert agg['reg']['corruptions']['errors']['mce'] == pytest.approx(1.25)
  with pytest.raises(errors.ReportError, match='--baseline'):
    report.aggregate([a, b, reg], baseline='nobody')


def test_bar_tick_labels_tell_models_with_the_same_first_word_apart():
  """The Boundary bars are labelled by each model's first word; two regularized models show their
  settings (not 'regularized 2' and 'regularized 3'), and numbers only where those agree too."""
  assert short_labels(['unregularized', 'regularized (α=4, Th=0.8, by fashion_mnist)',
                        'regularized (α=1, Th=0.8, by fashion_mnist)']) \
      == ['unregularized', 'regularized\nα=4, Th=0.8', 'regularized\nα=1, Th=0.8']
  assert short_labels(['unregularized', 'regularized (α=4, Th=0.8, by mnist)']) == ['unregularized', 'regularized']
  assert short_labels(['regularized (α=4, Th=0.8, by a)', 'regularized (α=4, Th=0.8, by b)']) \
      == ['regularized\nα=4, Th=0.8 1', 'regularized\nα=4, Th=0.8 2']


# ---------------------------------------------------------------- records of the first format

def test_a_first_format_record_is_upgraded_by_moving_its_results():
  old = {'workdir': '/runs/a', 'dataset': 'mnist', 'seeds': [0], 'alpha': 0.0, 'num_images': 100, 'first_image': 0,
         'attacks': {'gaussian': {'levels': [0.0, 0.5], 'accuracy': [[0.9, 0.5]]},
                     'pgd_linf': {'levels': EPS, 'accuracy': [[0.9, 0.5, 0.2, 0.0]], 'settings': LINF,
                                  'num_images': 50}},
         'seconds': {'gaussian': 1.5, 'pgd_linf': 7.0, 'boundary': 3.0},
         'boundary': {'protocol': 'release', 'steps': 50, 'repeats': 1, 'num_images': 20, 'score': [0.02]},
         'corruptions': {'variant': 'mnist_c', 'num_images': 100, 'severities': {'stripe': [1]},
                         'accuracy': {'stripe': [[0.7]]}},
         'clean_accuracy': [0.9],
         'gradient_masking_checks': [{'check': 'pgd_monotone[pgd_linf]', 'passed': True, 'detail': 'ok'}]}
  assert report.upgrade(old) == {
      'format': 2, 'upgraded_from': 1, 'workdir': '/runs/a', 'dataset': 'mnist', 'seeds': [0], 'alpha': 0.0,
      'num_images': 100, 'first_image': 0, 'clean_accuracy': [0.9],
      'results': {
          'gaussian': {'kind': 'curve', 'levels': [0.0, 0.5], 'accuracy': [[0.9, 0.5]], 'seconds': 1.5},
          'pgd_linf': {'kind': 'curve', 'levels': EPS, 'accuracy': [[0.9, 0.5, 0.2, 0.0]], 'settings': LINF,
                       'num_images': 50, 'seconds': 7.0},
          'boundary': {'kind': 'boundary', 'protocol': 'release', 'steps': 50, 'repeats': 1, 'num_images': 20,
                       'score': [0.02], 'seconds': 3.0},
          'corruptions': {'kind': 'corruptions', 'variant': 'mnist_c', 'num_images': 100,
                          'severities': {'stripe': [1]}, 'accuracy': {'stripe': [[0.7]]}},
          'gradient_masking_checks': {'kind': 'gradient_masking_checks', 'checks': [
              {'check': 'pgd_monotone[pgd_linf]', 'passed': True, 'detail': 'ok'}]}}}
  new = report.upgrade(old)
  assert report.upgrade(new) is new                 # the current format is left alone


COMMITTED = os.path.join(ROOT, 'docs', 'results', 'fashion_mnist')


def test_the_committed_first_format_records_reproduce_the_committed_summary(tmp_path):
  """docs/results/fashion_mnist: three models of 4 seeds, every attack, written by the report of the
  first format. Copied into run directories, read (upgraded) and aggregated again, they give the
  committed summary.json exactly and the committed robustness.md line by line, with the dataset
  each model's entry and the Models table name since (the committed files are from before)."""
  names = ['unregularized', 'regularized', 'regularized_a1_th0.8']
  dirs = []
  for name in names:
    os.makedirs(tmp_path / name)
    shutil.copy(os.path.join(COMMITTED, f'robustness_{name}.json'), tmp_path / name / 'robustness.json')
    dirs.append(str(tmp_path / name))
  records = report.load_records(dirs)
  assert all(r['upgraded_from'] == 1 and 'attacks' not in r for r in records)
  agg = report.aggregate(records)
  committed = _strict_load(os.path.join(COMMITTED, 'summary.json'))
  assert json.loads(jsonio.dumps(agg)) == {label: dict(e, dataset='fashion_mnist') for label, e in committed.items()}
  with open(os.path.join(COMMITTED, 'robustness.md')) as f:
    committed_md = f.read()
  models = committed_md.split('## Models\n\n')[1].split('\n\n')[0]
  assert report.markdown_report(agg, 'fashion_mnist, 4 seeds per model') == \
      committed_md.replace(models, _with_dataset_column(models, 'fashion_mnist'))


def _with_dataset_column(table, dataset):
  """The Models table of a report from before its dataset column, with the column (second)."""
  rows = []
  for i, line in enumerate(table.splitlines()):
    cells = line.split('|')   # ['', ' model ', ' runs ', …, '']
    cells.insert(2, ' dataset ' if i == 0 else '---' if i == 1 else f' {dataset} ')
    rows.append('|'.join(cells))
  return '\n'.join(rows)


# ---------------------------------------------------------------- the grid

def test_grid_selects_the_best_noise_score_within_the_accuracy_drop(tmp_path):
  """α=0: clean 0.90; α=4: clean 0.89 (within 0.02), noise means 0.6, 0.7, 0.8 -> score 0.7;
  α=10: clean 0.85 (too far below), score 0.9. The selection is α=4."""
  def run(name, alpha, clean, means):
    noise = ('gaussian', 'uniform', 'salt_pepper')
    curves = {n: _curve([0.0, 1.0], [[m + 0.1, m - 0.1]]) for n, m in zip(noise, means)}
    return _record(tmp_path / name, alpha, [0], curves, None, None, [clean])
  dirs = _write([run('a0', 0.0, 0.9, [0.5, 0.5, 0.5]), run('a4', 4.0, 0.89, [0.6, 0.7, 0.8]),
                 run('a10', 10.0, 0.85, [0.9, 0.9, 0.9])])
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.report', '--grid', f'--workdirs={",".join(dirs)}',
                        f'--out={tmp_path}/grid'], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  line = json.loads(out.stdout)
  assert line['selected']['workdir'] == str(tmp_path / 'a4') and line['selected']['score'] == pytest.approx(0.7)
  g = _strict_load(tmp_path / 'grid' / 'grid.json')
  assert [r['alpha'] for r in g['rows']] == [0.0, 4.0, 10.0] and g['baseline_clean_accuracy'] == pytest.approx(0.9)
  md = (tmp_path / 'grid' / 'grid.md').read_text()
  assert '| 4 | 0.2 | 0.890 | 0.600 | 0.700 | 0.800 | 0.700 | **selected** |' in md
  assert '| 10 | 0.2 | 0.850 | 0.900 | 0.900 | 0.900 | 0.900 | clean acc. more than 2% below α=0 |' in md


# -- black-box attacks and certified accuracy ------------------------------------------------------

SQUARE = {'attack': 'square', 'lp': 'linf', 'n_queries': 1000, 'p_init': 0.8, 'loss': 'margin', 'redraw': True}


def _blackbox_record(workdir, alpha, hsj_median, square_acc, certified):
  """2 seeds: HopSkipJump L2 medians [2][3] at budgets 100/1000/10000, Square L∞ accuracy [2][3] at
  ε 0/0.1/0.2 and after 0/10/1000 queries at ε = 0.2 (the same rows), smoothing's certified accuracy
  [2][1][2] at σ = 0.25, radii 0 and 0.5, white-box PGD L∞ 0.9/0.5/0.1 on every seed."""
  n, k = 100, len(hsj_median)
  results = {
      'pgd_linf': _curve([0.0, 0.1, 0.2], [[0.9, 0.5, 0.1]] * k, LINF),
      'square_linf': dict(_curve([0.0, 0.1, 0.2], square_acc), settings=SQUARE, num_images=n),
      'square_linf_queries': dict(_curve([0, 10, 1000], square_acc), settings=dict(SQUARE, eps=0.2), num_images=n),
      'hopskipjump': {'kind': 'decision_distance', 'attack': 'hopskipjump', 'norm': 'l2', 'budgets': [100, 1000, 10000],
                      'num_images': n, 'bounds': [0.0, 1.0], 'distance': 'RMS', 'median': hsj_median,
                      'successful': [[n - 1] * 3] * k, 'not_adversarial': [[0] * 3] * k, 'no_start': [1] * k,
                      'mean_queries': [9000.0] * k},
      'smoothing': {'kind': 'certified', 'num_images': 4, 'n0': 100, 'n': 1000, 'alpha': 0.001, 'noise': 'N(0, σ²I)',
                    'sigmas': [0.25], 'radii': [0.0, 0.5], 'certified_accuracy': certified,
                    'radius': [[[0.1, 0.6, None, 0.0]]] * k, 'abstained': [[1]] * k}}
  return {'format': 2, 'workdir': str(workdir), 'dataset': 'fashion_mnist', 'seeds': list(range(k)), 'alpha': alpha,
          'threshold': 0.8, 'reg_dataset': 'fashion_mnist', 'num_images': n, 'num_classes': 10,
          'clean_accuracy': [0.9] * k, 'results': results}


def test_blackbox_and_certified_results_get_figures_tables_and_checks(tmp_path):
  """Unregularized: HopSkipJump medians 0.10/0.08/0.06 and 0.20/0.16/0.12 -> 0.15 ± 0.05, 0.12 ± 0.04,
  0.09 ± 0.03; Square [0.9, 0.6, 0.2] on both seeds (never below PGD's 0.9/0.5/0.1: passes); certified
  accuracy [0.5, 0.25] and [0.75, 0.25] -> 0.625 ± 0.125 and 0.25 ± 0. Regularized: Square [0.9, 0.4,
  0.0] falls below PGD (0.4 < 0.5 at ε = 0.1): pgd_below_blackbox FAILS; its HopSkipJump medians rise
  with the budget (0.1 -> 0.2): more_queries FAILS."""
  unreg = _blackbox_record(tmp_path / 'u', 0.0, [[0.10, 0.08, 0.06], [0.20, 0.16, 0.12]], [[0.9, 0.6, 0.2]] * 2,
                           [[[0.5, 0.25]], [[0.75, 0.25]]])
  reg = _blackbox_record(tmp_path / 'r', 1.0, [[0.1, 0.15, 0.2]] * 2, [[0.9, 0.4, 0.0]] * 2, [[[0.5, 0.5]]] * 2)
  agg = report.write_report(_write([unreg, reg]), str(tmp_path / 'out'), title='black-box')
  u = agg['unregularized']
  np.testing.assert_allclose([c['mean'] for c in u['hopskipjump']['median']], [0.15, 0.12, 0.09])
  np.testing.assert_allclose([c['sem'] for c in u['hopskipjump']['median']], [0.05, 0.04, 0.03])
  cert = u['smoothing']['certified_accuracy'][0]
  np.testing.assert_allclose(cert['mean'], [0.625, 0.25])
  np.testing.assert_allclose(cert['sem'], [0.125, 0.0], atol=1e-12)
  for name in ('robustness_blackbox.png', 'robustness_certified.png', 'robustness_whitebox.png'):
    png = (tmp_path / 'out' / name).read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10000, name
  assert not (tmp_path / 'out' / 'robustness.png').exists()   # Square is not one of the paper's attacks
  md = (tmp_path / 'out' / 'robustness.md').read_text()
  assert '**Square L∞ ε, 1000 queries** (`square_linf`, 100 images)' in md
  assert '**Square L∞ queries, ε = 0.2** (`square_linf_queries`, 100 images)' in md
  assert '| unregularized | 2 | 0.1500 ± 0.0500 | 0.1200 ± 0.0400 | 0.0900 ± 0.0300 | 198 of 200 | 2 |' in md
  assert '| unregularized | 2 | 0.625 ± 0.125 | 0.250 ± 0.000 | 1.0 ± 0.0 |' in md
  rows, verdict = _masking_rows(md, 'unregularized')
  assert verdict.endswith('all 5 checks passed'), verdict
  rows, verdict = _masking_rows(md, REG.replace('α=4, Th=0.2, by mnist', 'α=1, Th=0.8, by fashion_mnist'))
  assert rows['pgd_below_blackbox[pgd_linf vs square_linf]'] == '**FAILED**'
  assert rows['more_queries[hopskipjump]'] == '**FAILED**'
  assert rows['more_queries[square_linf_queries]'] == 'passed'
