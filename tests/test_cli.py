"""The command-line entry points: one convention (``error: …`` on stderr, exit status 2; Ctrl-C
130), errors before compiling, results as JSON."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_env, synthetic_host_data, tiny_config
from pixelreg_jax import cli, errors, report, rundir
from pixelreg_jax.trainer import create_trainer, train_loop


def _run(args, timeout=300, **env_extra):
  env = run_env()
  env.update(env_extra)
  return subprocess.run([sys.executable, '-m'] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _one_error_line(proc):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith('error: ')]
  assert len(errors) == 1
  return errors[0]


@pytest.mark.parametrize('override,match', [
    ('--config.reg.alpha=-1', 'alpha=-1.0'),
    ('--config.reg.threshold=1.5', 'threshold=1.5'),
    ('--config.model.name=resnet50', "config.model.name='resnet50'"),
    ('--config.dataset=svhn', "config.dataset='svhn'"),
])
def test_invalid_config_fails_in_one_line_without_compiling(tmp_path, override, match):
  out = _run(['pixelreg_jax.main', '--config=configs/fashion_mnist.py', f'--workdir={tmp_path}/w', override],
             JAX_LOG_COMPILES='1')
  assert match in _one_error_line(out)
  assert 'Compiling' not in out.stderr and 'Finished tracing' not in out.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('case', ['missing', 'syntax', 'no_get_config', 'not_a_config', 'misspelt_field',
                                  'misspelt_top_field', 'bad_value', 'unknown_flag', 'extra_argument'])
def test_config_file_and_flag_errors_are_one_line(tmp_path, case):
  good = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
  files = {'syntax': 'def get_config(:\n', 'no_get_config': 'x = 1\n',
           'not_a_config': 'def get_config():\n  return 3\n'}
  path = tmp_path / 'config.py'
  if case in files:
    path.write_text(files[case])
  args, match = {
      'missing': ([f'--config={tmp_path}/nope.py'], f'{tmp_path}/nope.py: No such file or directory'),
      'syntax': ([f'--config={path}'], f'{path}:1: syntax error'),
      'no_get_config': ([f'--config={path}'], 'defines no get_config()'),
      'not_a_config': ([f'--config={path}'], 'get_config() returned int, not a ConfigDict'),
      'misspelt_field': ([f'--config={good}', '--config.reg.alhpa=1'],
                         "--config.reg.alhpa: config.reg has no field 'alhpa' (did you mean 'alpha'?)"),
      'misspelt_top_field': ([f'--config={good}', '--config.num_epoch=1'], "config has no field 'num_epoch'"),
      'bad_value': ([f'--config={good}', '--config.reg.alpha=abc'], "could not convert string to float: 'abc'"),
      'unknown_flag': (['--wokdir=x'], "Unknown command line flag 'wokdir'"),
      'extra_argument': ([f'--config={good}', 'runs/x'], "unexpected arguments: ['runs/x']"),
  }[case]
  out = _run(['pixelreg_jax.main', f'--workdir={tmp_path}/w'] + args)
  assert match in _one_error_line(out)
  assert len([l for l in out.stderr.splitlines() if l.strip()]) == 1, out.stderr
  assert not (tmp_path / 'w').exists()


def test_default_config_is_found_from_any_directory(tmp_path):
  """``--config`` defaults to the package's own fashion_mnist.py, not a path relative to the
  current directory: from elsewhere, a bad override is checked against it."""
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.main', f'--workdir={tmp_path}/w', '--config.reg.alpha=-1'],
                       cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
  assert 'alpha=-1.0' in _one_error_line(out)


def test_one_line_errors_exit_status_and_interrupt(capsys):
  with pytest.raises(SystemExit) as e, cli.one_line_errors():
    raise errors.ReportError('first line\nsecond line')
  assert e.value.code == 2 and capsys.readouterr().err == 'error: first line: second line\n'
  with pytest.raises(SystemExit) as e, cli.one_line_errors():
    raise KeyboardInterrupt
  assert e.value.code == 130 and capsys.readouterr().err == 'error: interrupted (Ctrl-C)\n'
  with pytest.raises(SystemExit) as e, cli.one_line_errors():
    open('/nonexistent-dir/x')
  assert e.value.code == 2 and capsys.readouterr().err == 'error: /nonexistent-dir/x: No such file or directory\n'
  with pytest.raises(ZeroDivisionError), cli.one_line_errors():   # a bug keeps its traceback
    1 / 0


_CTRL_C_IN_GC_CALLBACK = textwrap.dedent('''
    import gc, os, signal, time
    from pixelreg_jax import cli

    def main(argv):
      def callback(phase, info):   # Ctrl-C arrives while the collector runs a callback
        if phase == 'start' and not fired:
          fired.append(1)
          os.kill(os.getpid(), signal.SIGINT)
      fired = []
      gc.callbacks.append(callback)
      gc.collect()
      time.sleep(20)
      print('finished as if never interrupted', flush=True)

    cli.run(main)
''')


def test_ctrl_c_dropped_by_a_gc_callback_still_interrupts(tmp_path):
  """A KeyboardInterrupt raised inside a garbage-collector callback (as JAX's _xla_gc_callback)
  is printed by Python as "Exception ignored" and dropped; cli.run delivers it again, so the run
  stops with the one-line error instead of going on to the end (a CI failure, 2026-11-26)."""
  script = tmp_path / 'gc_interrupt.py'
  script.write_text(_CTRL_C_IN_GC_CALLBACK)
  start = time.time()
  out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 130, (out.returncode, out.stdout, out.stderr)
  assert 'finished' not in out.stdout and 'Exception ignored' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines() == ['error: interrupted (Ctrl-C)']
  assert time.time() - start < 15


def test_ctrl_c_exit_skips_the_interpreter_teardown(tmp_path):
  """After Ctrl-C the process ends with os._exit once the run's own cleanup is done: an
  interrupted XLA lowering can crash Python's teardown (SIGSEGV after the error line). The run's
  ``finally`` blocks still run; atexit hooks (the teardown) do not."""
  script = tmp_path / 'exit.py'
  script.write_text(textwrap.dedent('''
      import atexit
      from pixelreg_jax import cli
      atexit.register(lambda: print('teardown ran', flush=True))
      def main(argv):
        try:
          raise KeyboardInterrupt
        finally:
          print('cleanup ran', flush=True)
      cli.run(main)
  '''))
  out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=60)
  assert (out.returncode, out.stdout, out.stderr) == (130, 'cleanup ran\n', 'error: interrupted (Ctrl-C)\n')


def test_cli_stays_light():
  """report and import_data import cli; it must not pull in JAX, orbax or TensorFlow."""
  code = ('import sys; import pixelreg_jax.cli, pixelreg_jax.report, pixelreg_jax.import_data; '
          'print(sorted(m for m in ("jax", "orbax", "tensorflow", "flax") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '[]'


def test_cifar10_offline_fails_fast_with_dataset_not_available(tmp_path):
  out = _run(['pixelreg_jax.main', '--config=configs/cifar10.py', f'--workdir={tmp_path}/w',
              f'--config.data_dir={tmp_path}/data'], JAX_LOG_COMPILES='1')
  line = _one_error_line(out)
  assert "dataset 'cifar10'" in line and 'not available' in line and 'import_data' in line
  assert 'Compiling' not in out.stderr


# ---------------------------------------------------------------- evaluate and report

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp('run')
  host = synthetic_host_data(n_train=96, n_test=40)
  config = tiny_config(num_epochs=1, num_seeds=2)
  trainer = create_trainer(config, host)
  fit = train_loop(trainer, str(wd), log=lambda s: None)
  result = fit.result
  (wd / 'config.json').write_text(config.to_json_best_effort())
  return wd, host, result


# The evaluation itself: tests/test_evaluate.py.


@pytest.mark.parametrize('flag,line', [
    ('--num_images=1000', 'error: --num_images is now --eval.num_images'),
    ('--boundary_images=100', 'error: --boundary_images is now --eval.boundary.images'),
    ('--corruptions=fog', 'error: --corruptions is now --eval.corruptions.names'),
    ('--eval.num_images=-5', 'error: eval.num_images=-5: must be at least 0'),
    ('--eval.boundary.protocol=weak', "error: eval.boundary.protocol='weak': choose one of ('release', 'strong')"),
    ('--eval.num_images=abc', "error: flag --eval.num_images=abc: invalid literal for int() with base 10: 'abc'"),
    ('--eval.boundary.imagez=3', "error: --eval.boundary.imagez: eval has no field 'boundary.imagez' "
                                 '(did you mean --eval.boundary.images?)'),
    ('--eval.corruptions.names=nope', "error: eval.corruptions.names: unknown corruption(s) ['nope']"),
    ('--eval.boundary=3', 'error: --eval.boundary is a group of settings; set its fields: --eval.boundary.batch, '),
])
def test_evaluate_flag_errors_are_one_line_before_anything_is_read(tmp_path, flag, line):
  out = _run(['pixelreg_jax.evaluate', f'--workdir={tmp_path}/none', '--attacks=gaussian', flag],
             JAX_LOG_COMPILES='1')
  assert _one_error_line(out).startswith(line)
  assert 'Compiling' not in out.stderr and not (tmp_path / 'none').exists()


_EVALUATE_NAN = textwrap.dedent('''
    import sys
    from pixelreg_jax import cli, evaluate, evaluation
    record = {'workdir': sys.argv[-1], 'num_images': 10, 'clean_accuracy': [0.5], 'results': {
        'boundary': {'kind': 'boundary', 'score': [float('nan')], 'median_per_repeat': [[float('nan')]]}}}
    evaluation.evaluate_run = lambda *a, **k: record
    evaluate.define_flags()
    cli.run(evaluate.main)
''')


def test_evaluate_writes_and_prints_strict_json(tmp_path):
  """An undefined Boundary score (NaN: a repeat without a successful image) is null in the file
  and in the printed line, never NaN."""
  out = subprocess.run([sys.executable, '-c', _EVALUATE_NAN, f'--workdir={tmp_path}', str(tmp_path)], cwd=ROOT,
                       env=run_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'NaN' not in out.stdout and json.loads(out.stdout)['boundary_score'] is None
  text = (tmp_path / 'robustness.json').read_text()
  assert 'NaN' not in text and json.loads(text)['results']['boundary']['score'] == [None]


def test_report_pools_seeds_and_writes_plot_and_table(tmp_path):
  def record(wd, alpha, acc):
    rec = {'format': 2, 'workdir': str(wd), 'dataset': 'mnist', 'seeds': list(range(len(acc))), 'alpha': alpha,
           'threshold': 0.2, 'reg_dataset': 'mnist', 'num_images': 10,
           'results': {'gaussian': {'kind': 'curve', 'levels': [0.0, 0.25, 0.5], 'accuracy': acc}}}
    wd.mkdir()
    (wd / 'robustness.json').write_text(json.dumps(rec))
    return str(wd)

  dirs = [record(tmp_path / 'b0', 0.0, [[0.9, 0.5, 0.2]]), record(tmp_path / 'b1', 0.0, [[0.8, 0.3, 0.1]]),
          record(tmp_path / 'r', 4.0, [[0.9, 0.7, 0.5], [0.9, 0.6, 0.4]])]
  agg = report.write_report(dirs, str(tmp_path / 'out'))
  base = agg['unregularized']['attacks']['gaussian']
  assert agg['unregularized']['n'] == 2 and base['mean'] == pytest.approx([0.85, 0.4, 0.15])
  assert base['sem'] == pytest.approx([0.05, 0.1, 0.05])          # |a−b|/2 for two samples
  reg = agg['regularized (α=4, Th=0.2, by mnist)']['attacks']['gaussian']
  assert reg['mean'] == pytest.approx([0.9, 0.65, 0.45])
  png = (tmp_path / 'out' / 'robustness.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10000
  md = (tmp_path / 'out' / 'robustness.md').read_text()
  assert '0.850 ± 0.050' in md and 'regularized (α=4' in md


def test_analysis_matches_numpy_on_the_models_own_features(trained, monkeypatch):
  from pixelreg_jax import analysis
  from pixelreg_jax import input_pipeline as pipe
  from pixelreg_jax.config import input_size
  wd, host, _ = trained
  monkeypatch.setattr(analysis.data_lib, 'load_split',
                      lambda *a, num_examples=0, **k: (host['train_x'][:num_examples], host['train_y'][:num_examples]))
  rec = analysis.analyze(str(wd), num_images=30, log=lambda s: None)
  assert rec['num_pairs'] == 30 * 29 // 2 and len(rec['seeds']) == 2
  # NumPy reference for seed 1: S^pixel from the formula, tap cosines from the taps.
  run = rundir.load_run(str(wd), log=lambda s: None)
  size = input_size(run.config)
  v = run.seed_variables(1)
  x = np.asarray(pipe.model_input(jnp.asarray(host['train_x'][:30]), size, 1), np.float64)[..., 0].reshape(30, -1)
  x = x - x.mean(0)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  iu = np.triu_indices(30, 1)
  s_pixel = (x @ x.T)[iu]
  taps = run.model.apply(v, jnp.asarray(pipe.model_input(jnp.asarray(host['train_x'][:30]), size, 1)), False,
                         method='features')
  w = np.exp(np.asarray(v['params']['layer_weights'], np.float64))
  w /= w.sum()
  combined = 0
  for t, tap in enumerate(taps):
    f = (np.asarray(tap, np.float64) - np.asarray(v['sim_stats'][f'running_mean_{t}'])).reshape(30, -1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    cos = (f @ f.T)[iu]
    combined = combined + w[t] * cos
    assert rec['seeds'][1]['taps'][analysis.TAP_NAMES[t]]['pearson'] == pytest.approx(
        np.corrcoef(cos, s_pixel)[0, 1], abs=1e-4)
  assert rec['seeds'][1]['combined']['pearson'] == pytest.approx(np.corrcoef(combined, s_pixel)[0, 1], abs=1e-4)
  analysis.write(rec, str(wd / 'an'))
  assert (wd / 'an' / 'analysis.png').stat().st_size > 10000
  saved = json.loads((wd / 'an' / 'analysis.json').read_text())
  assert saved['combined_mean']['pearson'] == pytest.approx(rec['combined_mean']['pearson'])


def test_analysis_refuses_a_quadratic_blow_up_before_loading_anything(tmp_path):
  out = _run(['pixelreg_jax.analysis', f'--workdir={tmp_path}', '--num_images=70000'])
  line = _one_error_line(out)
  assert '--num_images=70000 would need about 292 GiB' in line and 'at most 10000' in line   # 64·N² bytes


def _evaluated(path, alpha, acc, seeds=(0,), config=None):
  rec = {'format': 2, 'workdir': str(path), 'dataset': 'mnist', 'seeds': list(seeds), 'alpha': alpha,
         'threshold': 0.2, 'reg_dataset': 'mnist', 'num_images': 10,
         'results': {'gaussian': {'kind': 'curve', 'levels': [0.0, 0.5], 'accuracy': acc}}}
  path.mkdir()
  (path / 'robustness.json').write_text(json.dumps(rec))
  if config is not None:
    (path / 'config.json').write_text(json.dumps(config))
  return str(path)


def test_report_counts_a_run_listed_twice_once(tmp_path):
  a = _evaluated(tmp_path / 'a', 0.0, [[0.9, 0.5]])
  b = _evaluated(tmp_path / 'b', 0.0, [[0.7, 0.3]])
  os.symlink(a, tmp_path / 'a_link')
  agg = report.aggregate(report.load_records([a, b, a + '/', str(tmp_path / 'a_link')]))
  e = agg['unregularized']
  assert e['n'] == 2 and e['attacks']['gaussian']['mean'] == pytest.approx([0.8, 0.4])
  assert e['attacks']['gaussian']['sem'] == pytest.approx([0.1, 0.1])   # |a−b|/2, not from four samples


@pytest.mark.parametrize('with_config', [True, False])
def test_report_refuses_two_copies_of_the_same_run(tmp_path, with_config):
  config = {'seed': 0, 'reg': {'alpha': 0.0}, 'data_dir': '/data/a'} if with_config else None
  a = _evaluated(tmp_path / 'a', 0.0, [[0.9, 0.5]], config=config)
  b = tmp_path / 'copy'
  shutil.copytree(a, b)
  if with_config:   # fields that do not change the model (rundir.NOT_THE_MODEL) may differ
    (b / 'config.json').write_text(json.dumps(dict(config, data_dir='/data/b', fused_pass=True,
                                                   seed_parallelism='vmap')))
  out = _run(['pixelreg_jax.report', f'--workdirs={a},{b}', f'--out={tmp_path}/out'])
  line = _one_error_line(out)
  assert 'hold the same run (seeds [0], same config)' in line and str(b) in line
  # Different seeds of one config are different rundir.
  c = _evaluated(tmp_path / 'c', 0.0, [[0.9, 0.5]], seeds=(1,), config=dict(config, seed=1) if config else None)
  assert report.aggregate(report.load_records([a, c]))['unregularized']['n'] == 2


def test_report_missing_evaluation_is_one_line(tmp_path):
  out = _run(['pixelreg_jax.report', f'--workdirs={tmp_path}'])
  assert 'robustness.json is missing' in _one_error_line(out)
  out = _run(['pixelreg_jax.report'])
  assert '--workdirs' in _one_error_line(out)


_LOGGING = '''
import sys, types
import numpy as np
from absl import logging
from pixelreg_jax import checkpoint, cli
def main(argv):
  logging.info('progress of ours')
  state = types.SimpleNamespace(step=np.zeros((), np.int32), params={'w': np.ones(4, np.float32)}, batch_stats={},
                                sim_stats={}, opt_state=())
  checkpoint.CheckpointManager(sys.argv[-1]).save(0, state, {'w': np.ones(4, np.float32)}, {})   # orbax logs INFO
  print('{"result": 1}')
cli.run(main)
'''


@pytest.mark.parametrize('verbosity', [None, '0'])
def test_progress_is_logged_on_stderr_and_library_info_only_when_asked(tmp_path, verbosity):
  args = [sys.executable, '-c', _LOGGING] + ([f'--verbosity={verbosity}'] if verbosity else []) + [str(tmp_path)]
  out = subprocess.run(args, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout == '{"result": 1}\n'                       # stdout: the result only
  assert 'progress of ours' in out.stderr
  orbax_lines = [l for l in out.stderr.splitlines() if 'orbax' in l.lower() or 'checkpoint_manager' in l]
  assert bool(orbax_lines) == (verbosity is not None), out.stderr[-2000:]
