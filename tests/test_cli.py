"""The command-line entry points: one-line errors before compiling, results as JSON."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_env, synthetic_host_data, tiny_config
from pixelreg_jax import evaluate, report, train


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
    ('--config.reg.alpha=-1', 'config.reg.alpha=-1.0'),
    ('--config.reg.threshold=1.5', 'config.reg.threshold=1.5'),
    ('--config.model.name=resnet50', "config.model.name='resnet50'"),
    ('--config.dataset=svhn', "config.dataset='svhn'"),
])
def test_invalid_config_fails_in_one_line_without_compiling(tmp_path, override, match):
  out = _run(['pixelreg_jax.main', '--config=configs/fashion_mnist.py', f'--workdir={tmp_path}/w', override],
             JAX_LOG_COMPILES='1')
  assert match in _one_error_line(out)
  assert 'Compiling' not in out.stderr and 'Finished tracing' not in out.stderr
  assert not (tmp_path / 'w').exists()


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
  trainer = train.Trainer(config, str(wd), host)
  result = trainer.fit(log=lambda s: None)
  (wd / 'config.json').write_text(config.to_json_best_effort())
  return wd, host, result


def test_evaluate_run_records_every_seed_and_attack(trained, monkeypatch):
  wd, host, result = trained
  monkeypatch.setattr(evaluate.data_lib, 'load_split', lambda *a, **k: (host['test_x'], host['test_y']))
  from pixelreg_jax import attacks
  rec = evaluate.evaluate_run(str(wd), ['gaussian', 'salt_pepper', 'fgsm', 'boundary'], source_workdir=str(wd),
                              batch_size=16, boundary_images=6, boundary_repeats=2, boundary_batch=3,
                              boundary_cfg=attacks.BoundaryConfig(steps=4, candidates=2, init_tries=5),
                              log=lambda s: None)
  assert rec['seeds'] == [0, 1]
  for name in ('gaussian', 'salt_pepper', 'fgsm'):
    acc = np.asarray(rec['attacks'][name]['accuracy'])
    assert acc.shape == (2, 10) and np.all((acc >= 0) & (acc <= 1))
  # Level 0 is the clean test accuracy that training reported, for each seed.
  np.testing.assert_allclose(rec['clean_accuracy'], result['test_accuracy_per_seed'], atol=1e-6)
  b = rec['boundary']
  assert len(b['median_distance']) == 2 and len(b['median_distance_per_repeat'][0]) == 2
  assert b['all_adversarial']
  assert all(np.isfinite(m) or f > 0 for m, f in zip(b['median_distance'], b['failed_starts']))
  s = evaluate.summary(rec)
  assert set(s) >= {'clean_accuracy', 'gaussian_mean_accuracy', 'fgsm_mean_accuracy', 'boundary_median_distance'}


def test_unknown_attack_is_a_config_error(trained):
  wd, _, _ = trained
  with pytest.raises(evaluate.cli.ConfigError, match='unknown attack'):
    evaluate.evaluate_run(str(wd), ['gaussian', 'pgd'])


def test_mean_sem_by_hand():
  m, s = report.mean_sem(np.array([[0.5, 1.0], [0.7, 1.0], [0.9, 1.0]]))
  np.testing.assert_allclose(m, [0.7, 1.0])
  np.testing.assert_allclose(s, [0.2 / np.sqrt(3), 0.0])      # std(ddof=1) = 0.2
  m1, s1 = report.mean_sem(np.array([[0.4, 0.6]]))
  np.testing.assert_allclose(s1, [0, 0])


def test_report_pools_seeds_and_writes_plot_and_table(tmp_path):
  def record(wd, alpha, acc):
    rec = {'workdir': str(wd), 'dataset': 'mnist', 'seeds': list(range(len(acc))), 'alpha': alpha,
           'threshold': 0.2, 'reg_dataset': 'mnist', 'num_images': 10,
           'attacks': {'gaussian': {'levels': [0.0, 0.25, 0.5], 'accuracy': acc}}}
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
  from pixelreg_jax import analysis, input_pipeline as pipe, runs
  wd, host, _ = trained
  monkeypatch.setattr(analysis.data_lib, 'load_split',
                      lambda *a, num_examples=0, **k: (host['train_x'][:num_examples], host['train_y'][:num_examples]))
  rec = analysis.analyze(str(wd), num_images=30, log=lambda s: None)
  assert rec['num_pairs'] == 30 * 29 // 2 and len(rec['seeds']) == 2
  # NumPy reference for seed 1: S^pixel from the formula, tap cosines from the taps.
  run = runs.load_run(str(wd), log=lambda s: None)
  v = run.seed_variables(1)
  x = np.asarray(pipe.model_input(jnp.asarray(host['train_x'][:30]), 32, 1), np.float64)[..., 0].reshape(30, -1)
  x = x - x.mean(0)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  iu = np.triu_indices(30, 1)
  s_pixel = (x @ x.T)[iu]
  taps = run.model.apply(v, jnp.asarray(pipe.model_input(jnp.asarray(host['train_x'][:30]), 32, 1)), False,
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
