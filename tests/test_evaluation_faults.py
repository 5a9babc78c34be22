"""Faults of the evaluation and the report a hostile user can cause, each in a real process where it
involves one: a population's root, a run being trained or unfinished, two evaluations of one run,
an output that cannot be written, an FGSM source of another input shape; records and config.json
files the report cannot read, runs that are not one model, copies of a run.

The runs are trained once per module: a population of two settings (α=0 and α=4, one seed each,
one epoch) by the real command line, whose setting directories are the evaluated run and its FGSM
source, and a 3-channel run as the wrong source.
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, cli_overrides, run_env, tiny_config, write_imported_dataset
from pixelreg_jax import analysis, errors, evaluation, jsonio, report, rundir
from pixelreg_jax.evaluation import store
from pixelreg_jax.trainer import train_and_evaluate

SMALL = {'num_images': 16, 'batch_size': 16}
SMALL_FLAGS = ['--eval.num_images=16', '--eval.batch_size=16']
QUIET = lambda s: None  # noqa: E731

# A training's lock, held until stdin closes: what a running training holds on its run directory.
_HOLD_TRAINING_LOCK = '''
import sys
from pixelreg_jax import rundir
with rundir.lock(sys.argv[1]):
  print('held', flush=True)
  sys.stdin.read()
'''


def _cli(module, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=run_env(), capture_output=True,
                        text=True, timeout=timeout)


def _one_line(proc) -> str:
  """The one line a refused command prints (exit status 2, no traceback, nothing else on stderr)."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{'root': a population's root (α=0 and α=4), 'run': its α=4 setting, 'source': its α=0 setting,
  'rgb': a 3-channel α=0 run, 'data': the imported data}, trained once."""
  tmp = tmp_path_factory.mktemp('runs')
  data = tmp / 'data'
  write_imported_dataset(data, n_train=192, n_test=48)
  root = tmp / 'population'
  proc = subprocess.run([sys.executable, '-m', 'pixelreg_jax.main', f'--workdir={root}']
                        + cli_overrides(data, num_epochs=1, num_seeds=1, population='0:0,4:0.8'),
                        cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rgb = tmp / 'rgb'
  config = tiny_config(num_epochs=1, num_seeds=1, data_dir=str(data), **{'reg.alpha': 0.0, 'model.channels': 3})
  train_and_evaluate(config, str(rgb))
  return {'root': root, 'run': root / 'a4_th0.8', 'source': root / 'a0_th0', 'rgb': rgb, 'data': data}


@pytest.fixture
def no_loading(monkeypatch):
  """Fails the test if a checkpoint is loaded."""
  def loaded(*args, **kwargs):
    raise AssertionError('a checkpoint was loaded')
  monkeypatch.setattr(rundir, 'load_run', loaded)


@pytest.fixture
def run(runs, tmp_path):
  """A copy of the evaluated run (each test writes into its own)."""
  shutil.copytree(runs['run'], tmp_path / 'run')
  return tmp_path / 'run'


def _read(path):
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------- evaluate: what is evaluated


def test_a_population_root_is_refused_naming_its_settings(runs):
  """It was evaluated as one model: the first setting's seed under the label of the unused
  config.reg (α=1, Th=0.8), the α=4 member ignored. Evaluate and analysis refuse it and name the
  settings' run directories, which evaluate as the models they are."""
  root = runs['root']
  for module, args in (('pixelreg_jax.evaluate', ['--attacks=gaussian', *SMALL_FLAGS]), ('pixelreg_jax.analysis', [])):
    line = _one_line(_cli(module, f'--workdir={root}', *args))
    assert f'--workdir={root} is the root of a population of 2 settings' in line, line
    assert f'{root}/a0_th0, {root}/a4_th0.8' in line and 'written when' not in line, line
  assert not (root / 'robustness.json').exists() and not (root / 'analysis.json').exists()
  settings = evaluation.evaluation_config(SMALL)
  for name, alpha, threshold in (('a0_th0', 0.0, 0.0), ('a4_th0.8', 4.0, 0.8)):
    rec = evaluation.evaluate_run(str(root / name), ['gaussian'], settings, log=QUIET)
    assert (rec['alpha'], rec['threshold'], rec['seeds']) == (alpha, threshold, [0])


def test_an_fgsm_source_of_another_input_shape_is_refused(runs):
  """A 3-channel source for a 1-channel run was a shape error deep in the compiled FGSM program."""
  with pytest.raises(errors.ConfigError) as e:
    evaluation.evaluate_run(str(runs['run']), ['fgsm'], evaluation.evaluation_config(SMALL),
                            source_workdir=str(runs['rgb']), log=QUIET)
  assert f'--source_workdir={runs["rgb"]} is a model of channels 3, the evaluated run of 1' in str(e.value)
  assert '\n' not in str(e.value)


def test_bad_settings_are_one_line():
  """``--eval.seed=-1`` with the Boundary attack (a negative seed of its image choice)."""
  line = _one_line(_cli('pixelreg_jax.evaluate', '--workdir=/nonexistent', '--attacks=boundary', '--eval.seed=-1'))
  assert line == 'error: eval.seed=-1: must be at least 0'


# ---------------------------------------------------------------- evaluate: training lock, unfinished runs


def test_a_run_being_trained_is_refused_and_evaluating_never_blocks_training(run):
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_TRAINING_LOCK, str(run)], cwd=ROOT, env=run_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(errors.ConfigError) as e:
      evaluation.evaluate_run(str(run), ['gaussian'], evaluation.evaluation_config(SMALL), log=QUIET)
    assert str(e.value).startswith(f'--workdir={run} is being trained (pid {holder.pid} on ')
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  # Nobody trains now: allowed. An evaluation holding its own lock leaves the training lock free.
  assert rundir.training_holder(str(run)) is None
  with store.locked(str(run), QUIET), rundir.lock(str(run)):
    pass
  rec = evaluation.evaluate_run(str(run), ['gaussian'], evaluation.evaluation_config(SMALL), log=QUIET)
  assert 'unfinished' not in rec['checkpoint']


def test_an_unfinished_run_is_refused_unless_allowed(run):
  """Its checkpoints stop before config.num_epochs (a resume with more epochs that has not run yet)."""
  config = _read(run / 'config.json')
  config['num_epochs'] = 2
  jsonio.write(str(run / 'config.json'), config)
  line = _one_line(_cli('pixelreg_jax.evaluate', f'--workdir={run}', '--attacks=gaussian', *SMALL_FLAGS))
  assert f'--workdir={run} is an unfinished run: its checkpoints hold 1 of 2 epochs' in line
  assert '--allow_unfinished' in line and not (run / 'robustness.json').exists()
  logs = []
  rec = evaluation.evaluate_run(str(run), ['gaussian'], evaluation.evaluation_config(SMALL), log=logs.append,
                                allow_unfinished=True)
  assert rec['checkpoint']['unfinished'] == '1 of 2 epochs' and rec['checkpoint']['checkpoint_epoch'] == 1
  assert any('unfinished run (1 of 2 epochs)' in line for line in logs)


# ---------------------------------------------------------------- evaluate: the output


def test_an_output_that_cannot_be_written_is_refused_before_anything_is_loaded(run, no_loading):
  line = _one_line(_cli('pixelreg_jax.evaluate', f'--workdir={run}', '--attacks=gaussian',
                        '--output=/nonexistent/r.json'))
  assert line == 'error: the output /nonexistent/r.json cannot be written: /nonexistent does not exist; create it ' \
                 'or choose another --output'
  with pytest.raises(errors.ConfigError, match='is a directory'):
    evaluation.evaluate_run(str(run), ['gaussian'], evaluation.evaluation_config(SMALL), output=str(run), log=QUIET)


def _can_mount(directory) -> bool:
  probe = directory / 'probe'
  probe.mkdir()
  try:
    ok = subprocess.run(['mount', '--bind', str(probe), str(probe)], capture_output=True).returncode == 0
    subprocess.run(['umount', str(probe)], capture_output=True)
    return ok
  except FileNotFoundError:
    return False
  finally:
    shutil.rmtree(probe, ignore_errors=True)


def test_a_read_only_run_directory_is_refused_before_anything_is_loaded(run, tmp_path, no_loading):
  """A read-only bind mount (what chmod cannot do to root): the whole evaluation ran, then the write failed."""
  if os.geteuid() != 0 or not _can_mount(tmp_path):
    pytest.skip('mount is not available to this user')
  subprocess.run(['mount', '--bind', str(run), str(run)], check=True)
  try:
    subprocess.run(['mount', '-o', 'remount,ro,bind', str(run)], check=True)
    with pytest.raises(errors.ConfigError) as e:
      evaluation.evaluate_run(str(run), ['gaussian'], evaluation.evaluation_config(SMALL), output=str(run / 'r.json'),
                              log=QUIET)
  finally:
    subprocess.run(['umount', str(run)], capture_output=True)
  assert str(e.value) == f'the output {run}/r.json cannot be written: {run}: Read-only file system; make it ' \
                         'writable or choose another --output'


# ---------------------------------------------------------------- evaluate: merging, the lock on the record


def _evaluate(run, attacks, settings, out, log=QUIET, **kwargs):
  """What ``evaluate`` does: evaluate, then merge into the record at ``out``; returns what was written."""
  return store.write(str(out), evaluation.evaluate_run(str(run), attacks, settings, output=str(out), log=log, **kwargs),
                     log)


def test_evaluations_of_one_run_merge_per_evaluator(runs, run):
  """gaussian, then fgsm, then gaussian and uniform without a source: every result is kept (fgsm
  with its source), the same evaluation again gives the same numbers bit for bit; another seed
  replaces the record, saying so."""
  out, source, settings = run / 'robustness.json', runs['source'], evaluation.evaluation_config(SMALL)
  first = _evaluate(run, ['gaussian'], settings, out)
  second = _evaluate(run, ['fgsm'], settings, out, source_workdir=str(source))
  assert list(second['results']) == ['gaussian', 'fgsm'] and _read(out) == json.loads(jsonio.dumps(second))
  assert second['results']['gaussian'] == first['results']['gaussian']
  logs = []
  third = _evaluate(run, ['gaussian', 'uniform'], settings, out, logs.append)
  saved = _read(out)
  assert set(saved['results']) == {'gaussian', 'fgsm', 'uniform'} and set(saved['evaluators']) == set(saved['results'])
  assert saved['results']['fgsm'] == second['results']['fgsm']
  assert (saved['source_workdir'], saved['source_checkpoint']) == (str(source), second['source_checkpoint'])
  assert third['results']['gaussian']['accuracy'] == first['results']['gaussian']['accuracy']   # bit-identical
  assert saved['clean_accuracy'] == first['clean_accuracy']
  assert any('kept the earlier results of fgsm' in line for line in logs)
  logs.clear()
  _evaluate(run, ['uniform'], evaluation.evaluation_config(dict(SMALL, seed=1)), out, logs.append)
  assert set(_read(out)['results']) == {'uniform'}
  assert any('the earlier evaluation in it is replaced, not merged: its eval.seed differs (0 there, 1 now)' in line
             for line in logs)


def _lines(stream, found: queue.Queue):
  for line in stream:
    found.put(line)
  found.put(None)


def test_two_evaluations_of_one_run_wait_for_each_other_and_keep_both(run):
  """While one evaluation holds the record's lock (reads, merges, writes), another waits for it and
  then merges into what the first wrote: neither result is lost."""
  settings = evaluation.evaluation_config(SMALL)
  other = evaluation.evaluate_run(str(run), ['uniform'], settings, log=QUIET)   # the first one's record
  fd = os.open(run / store.LOCK_NAME, os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX)
  proc = subprocess.Popen([sys.executable, '-m', 'pixelreg_jax.evaluate', f'--workdir={run}', '--attacks=gaussian',
                           *SMALL_FLAGS], cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  found = queue.Queue()
  threading.Thread(target=_lines, args=(proc.stderr, found), daemon=True).start()
  try:
    line = ''
    while line is not None and 'waiting for another evaluation' not in line:
      line = found.get(timeout=300)
    assert line is not None, 'the second evaluation did not wait for the lock'
    assert not (run / 'robustness.json').exists()
    jsonio.write(str(run / 'robustness.json'), other)   # the first one writes while it holds the lock
  finally:
    os.close(fd)
  stdout, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0
  saved = _read(run / 'robustness.json')
  assert set(saved['results']) == {'uniform', 'gaussian'}
  assert saved['results']['uniform'] == json.loads(jsonio.dumps(other))['results']['uniform']
  assert set(json.loads(stdout)) >= {'gaussian_mean_accuracy', 'uniform_mean_accuracy'}


# ---------------------------------------------------------------- report: records and configs


def _curve(seeds, value=0.5):
  return {'kind': 'curve', 'levels': [0.0, 0.5], 'accuracy': [[0.9, value]] * len(seeds), 'seconds': 1.0}


def _record(workdir, seeds=(0,), dataset='mnist', alpha=0.0, value=0.5):
  seeds = list(seeds)
  return {'format': 2, 'workdir': str(workdir), 'dataset': dataset, 'seeds': seeds, 'alpha': alpha, 'threshold': 0.2,
          'reg_dataset': dataset, 'num_images': 100, 'num_classes': 10, 'clean_accuracy': [0.9] * len(seeds),
          'checkpoint': {'checkpoint_epoch': 1, 'best_epoch': [1] * len(seeds), 'fallback_reason': None},
          'results': {'gaussian': _curve(seeds, value)}}


def _run_dir(directory, record, config=None, **config_fields):
  """A run directory with ``record`` as robustness.json and, unless ``config`` is False, a config.json
  of ``tiny_config(**config_fields)`` with the record's seeds and dataset."""
  os.makedirs(directory, exist_ok=True)
  jsonio.write(str(directory / 'robustness.json'), record)
  if config is not False:
    c = tiny_config(seed=record['seeds'][0], num_seeds=len(record['seeds']), dataset=record['dataset'],
                    **{'reg.alpha': record['alpha'], 'reg.threshold': record['threshold'],
                       'reg.dataset': record['reg_dataset']}, **config_fields)
    rundir.write_config(c, str(directory))
  return str(directory)


@pytest.mark.parametrize('text,what', [
    ('[]', 'holds a JSON list, not an evaluation record'),
    ('{}', "is not an evaluation record (no 'workdir')"),
    ('{"format": 2, "workdir": "w", "dataset": "mnist", "seeds": "01", "alpha": 0, "threshold": 0, '
     '"reg_dataset": "mnist", "results": {}}', "its seeds is '01'"),
    ('{"format": 2, "workdir": "w", "dataset": "mnist", "seeds": [0.5], "alpha": 0, "threshold": 0, '
     '"reg_dataset": "mnist", "results": {}}', 'its seeds are [0.5], not a list of integers'),
    ('{"attacks": [1, 2]}', 'is not an evaluation record (its attacks is [1, 2])'),
])
def test_a_robustness_json_that_is_not_a_record_is_one_line(tmp_path, text, what):
  (tmp_path / 'robustness.json').write_text(text)
  with pytest.raises(errors.ReportError) as e:
    report.write_report([str(tmp_path)], str(tmp_path / 'out'))
  assert what in str(e.value) and '\n' not in str(e.value)


def _wrong(record, change):
  change(record)
  return record


@pytest.mark.parametrize('change,what', [
    (lambda r: r['results'].update(gaussian=[1]), 'results.gaussian is not an object with a kind'),
    (lambda r: r['results']['gaussian'].update(accuracy=[[0.9]]), 'results.gaussian.accuracy[0] has 1 entries, not 2'),
    (lambda r: r['results']['gaussian'].update(accuracy=[[0.9, 0.5]] * 3),
     'results.gaussian.accuracy has 3 entries, not 1'),
    (lambda r: r['results']['gaussian'].update(levels='0, 0.5'), "results.gaussian.levels is '0, 0.5', not a list"),
    (lambda r: r.update(clean_accuracy=[0.9, 0.8]), 'its clean_accuracy is [0.9, 0.8], not one number per seed'),
    (lambda r: r['results'].update(boundary={'kind': 'boundary', 'protocol': 'release', 'steps': 5, 'repeats': 2,
                                             'num_images': 10, 'score': [0.1, 0.2]}),
     'results.boundary.score has 2 entries, not 1'),
    (lambda r: r['results'].update(corruptions={'kind': 'corruptions', 'variant': 'mnist_c', 'num_images': 10,
                                                'severities': {}, 'accuracy': {'fog': [[0.5]]}}),
     "results.corruptions.severities.fog is 'None', not a list"),
])
def test_results_of_the_wrong_shape_are_one_line(tmp_path, change, what):
  _run_dir(tmp_path / 'a', _wrong(_record(tmp_path / 'a'), change), config=False)
  with pytest.raises(errors.ReportError) as e:
    report.write_report([str(tmp_path / 'a')], str(tmp_path / 'out'))
  assert what in str(e.value) and str(e.value).startswith(f'{tmp_path}/a/robustness.json') and '\n' not in str(e.value)


def test_report_command_line_on_an_empty_record_is_one_line(tmp_path):
  (tmp_path / 'robustness.json').write_text('{}')
  line = _one_line(_cli('pixelreg_jax.report', f'--workdirs={tmp_path}', f'--out={tmp_path}/out'))
  assert line == f"error: {tmp_path}/robustness.json is not an evaluation record (no 'workdir'); evaluate " \
                 f"{tmp_path} again"


@pytest.mark.parametrize('text,what', [('[1, 2]', 'holds a JSON list, not a config'), ('{"reg": ', 'is unreadable')])
def test_a_broken_config_json_beside_a_record_is_one_line(tmp_path, text, what):
  _run_dir(tmp_path / 'a', _record(tmp_path / 'a'), config=False)
  (tmp_path / 'a' / 'config.json').write_text(text)
  with pytest.raises(errors.ReportError) as e:
    report.load_records([str(tmp_path / 'a')])
  assert str(e.value).startswith(f'{tmp_path}/a/config.json {what}') and '\n' not in str(e.value)
  assert 'repair or remove it' in str(e.value)


# ---------------------------------------------------------------- report: what pools into one model


@pytest.mark.parametrize('field,value,shown', [
    ('dataset', 'fashion_mnist', "dataset is 'mnist' in {a}, 'fashion_mnist' in {b}"),
    ('train_subset', 512, 'train_subset is 0 in {a}, 512 in {b}'),
    ('num_epochs', 3, 'num_epochs is 2 in {a}, 3 in {b}'),
])
def test_runs_that_are_not_one_model_are_not_pooled(tmp_path, field, value, shown):
  """The same default label (unregularized) and other seeds, but another dataset, training subset or
  length: they were pooled into one model of n=2."""
  a = _run_dir(tmp_path / 'a', _record(tmp_path / 'a', seeds=[0]))
  b_record = _record(tmp_path / 'b', seeds=[1], **({'dataset': value} if field == 'dataset' else {}))
  b = _run_dir(tmp_path / 'b', b_record, **({} if field == 'dataset' else {field: value}))
  with pytest.raises(errors.ReportError) as e:
    report.write_report([a, b], str(tmp_path / 'out'))
  assert f"the runs of 'unregularized' are not one model: {shown.format(a=a, b=b)}" in str(e.value)
  assert '\n' not in str(e.value)


def test_runs_that_differ_in_their_seeds_alone_are_pooled(tmp_path):
  a = _run_dir(tmp_path / 'a', _record(tmp_path / 'a', seeds=[0, 1]), **{'checkpoint.keep': 5})
  b = _run_dir(tmp_path / 'b', _record(tmp_path / 'b', seeds=[2], value=0.3))
  agg = report.write_report([a, b], str(tmp_path / 'out'))
  assert agg['unregularized']['n'] == 3 and agg['unregularized']['dataset'] == 'mnist'


def test_without_config_json_runs_pool_by_their_records(tmp_path, caplog):
  a = _run_dir(tmp_path / 'a', _record(tmp_path / 'a', seeds=[0]), config=False)
  b = _run_dir(tmp_path / 'b', _record(tmp_path / 'b', seeds=[1], value=0.3))
  assert report.aggregate(report.load_records([a, b]))['unregularized']['n'] == 2
  assert f'{a}: no config.json, so the runs of \'unregularized\' are pooled by the dataset, alpha' in caplog.text
  c = _run_dir(tmp_path / 'c', _record(tmp_path / 'c', seeds=[2], dataset='fashion_mnist'), config=False)
  with pytest.raises(errors.ReportError, match=f"dataset is 'mnist' in {a}, 'fashion_mnist' in {c}"):
    report.aggregate(report.load_records([a, c]), labels=['m', 'm'])
  with pytest.raises(errors.ReportError, match=f'alpha is 0.0 in {a}, 4.0 in {tmp_path}/d'):   # explicit labels too
    report.aggregate(report.load_records([a, _run_dir(tmp_path / 'd', _record(tmp_path / 'd', seeds=[3], alpha=4.0))]),
                     labels=['m', 'm'])


def test_the_dataset_is_named_in_every_title(tmp_path, monkeypatch):
  from pixelreg_jax.report import figures
  titles = []
  monkeypatch.setattr(figures, '_save', lambda fig, axes, path, title, ncol=3: titles.append(title))
  a = _record(tmp_path / 'a')
  a['results']['pgd_linf'] = dict(_curve([0]), settings={'norm': 'linf', 'steps': 10}, num_images=100)
  a['results']['corruptions'] = {'kind': 'corruptions', 'variant': 'mnist_c', 'num_images': 100,
                                 'severities': {'fog': [1]}, 'accuracy': {'fog': [[0.5]]}}
  report.write_report([_run_dir(tmp_path / 'a', a)], str(tmp_path / 'out'))
  assert len(titles) == 3 and all('mnist' in t for t in titles), titles
  md = (tmp_path / 'out' / 'robustness.md').read_text()
  assert md.startswith('# Robustness report (mnist)\n') and '| unregularized (baseline) | mnist | 1 | 1 |' in md
  agg = {'m': {'dataset': 'mnist'}, 'f': {'dataset': 'fashion_mnist'}}
  assert figures.titled('fashion_mnist runs', agg) == 'fashion_mnist runs (mnist)'
  assert figures.titled('mnist and fashion_mnist', agg) == 'mnist and fashion_mnist'
  assert figures.titled(None, agg) == 'fashion_mnist / mnist'


# ---------------------------------------------------------------- report: copies of a run


def test_copies_of_a_run_are_counted_once(tmp_path):
  """A copy differing only in checkpoint.keep (rundir.NOT_THE_MODEL); a copy without config.json
  (identity from the record: same seeds, dataset and numbers), also one evaluated again with one
  more result; different numbers are another run."""
  a = _run_dir(tmp_path / 'a', _record(tmp_path / 'a', seeds=[0, 1]))
  keep = _run_dir(tmp_path / 'keep', _record(tmp_path / 'a', seeds=[0, 1]), **{'checkpoint.keep': 7})
  bare = _run_dir(tmp_path / 'bare', _record(tmp_path / 'a', seeds=[0, 1]), config=False)
  more = _record(tmp_path / 'a', seeds=[0, 1])
  more['results']['uniform'] = _curve([0, 1], 0.4)
  more['results']['gaussian']['seconds'] = 9.0
  more = _run_dir(tmp_path / 'more', more, config=False)
  by_record = ' by their records (without config.json: the same dataset and results)'
  for copy, how in ((keep, ''), (bare, by_record), (more, by_record)):
    with pytest.raises(errors.ReportError) as e:
      report.load_records([a, copy])
    assert str(e.value).startswith(f'{a} and {copy} hold the same run (seeds [0, 1], same config){how}; '), str(e.value)
  other = _run_dir(tmp_path / 'other', _record(tmp_path / 'other', seeds=[0, 1], value=0.2), config=False)
  assert len(report.load_records([bare, other])) == 2


# ---------------------------------------------------------------- analysis


def test_analysis_writes_strict_json(tmp_path):
  """A NaN correlation (e.g. of a constant tap) is null in analysis.json, never NaN."""
  nan = float('nan')
  corr = {'pearson': nan, 'spearman': nan}
  samples = (np.linspace(0, 1, 6), [np.ones(6)] * 5, np.ones(6))
  record = {'workdir': str(tmp_path), 'alpha': 0.0, 'threshold': 0.0, 'num_images': 4, 'num_pairs': 6,
            'reg_dataset': 'mnist', 'bn': 'eval', 'combined_mean': corr,
            'seeds': [{'seed': 0, 'taps': {n: corr for n in analysis.TAP_NAMES}, 'combined': corr}],
            '_samples': samples}
  analysis.write(record, str(tmp_path))

  def refuse(constant):
    raise ValueError(constant)
  with open(tmp_path / 'analysis.json') as f:
    saved = json.load(f, parse_constant=refuse)
  assert saved['combined_mean'] == {'pearson': None, 'spearman': None}


def test_an_rgb_runs_boundary_result_carries_the_releases_channel0_score(runs, tmp_path):
  """The release scores an RGB model's Boundary attack on channel 0 only; the record carries that
  statistic beside the all-channel one, for RGB runs only."""
  settings = evaluation.evaluation_config({**SMALL, 'boundary.images': 4, 'boundary.steps': 3, 'boundary.repeats': 1,
                                           'boundary.init_tries': 20})
  for name, want in (('rgb', True), ('run', False)):
    shutil.copytree(runs[name], tmp_path / name)
    b = evaluation.evaluate_run(str(tmp_path / name), ['boundary'], settings, log=QUIET)['results']['boundary']
    assert ('score_channel0' in b) == want
    if want:
      assert len(b['score_channel0']) == len(b['score']) == 1
