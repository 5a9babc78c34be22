"""Checkpoints: resume after a real SIGKILL ends bitwise where an uninterrupted run does;
a corrupt latest checkpoint is set aside (not deleted) and the one before it is used."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, cli_overrides, run_env, synthetic_host_data, tiny_config, write_imported_dataset
from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import runs, train


def _final_state(workdir):
  run = runs.load_run(str(workdir), log=lambda s: None)
  manager = ckpt_lib.CheckpointManager(str(workdir), read_only=True)
  last = manager.all_steps()[-1]
  out = manager._restore_step(last, {'best': run.variables})
  return last, out['best']


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=480, n_test=64)
  cmd = lambda wd: [sys.executable, '-m', 'pixelreg_jax.main', '--config=configs/fashion_mnist.py',  # noqa: E731
                    f'--workdir={wd}'] + cli_overrides(data_dir, num_epochs=5)
  env = run_env()
  full = subprocess.run(cmd(tmp_path / 'full'), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert full.returncode == 0, full.stderr[-2000:]
  full_result = json.loads(full.stdout.strip().splitlines()[-1])

  # Kill the second run with SIGKILL as soon as its first checkpoint is on disk.
  wd = tmp_path / 'killed'
  proc = subprocess.Popen(cmd(wd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (wd / 'checkpoints' / '0').is_dir() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (wd / 'result.json').exists(), 'the run finished before it could be killed'
  done = sorted(int(p) for p in os.listdir(wd / 'checkpoints') if p.isdigit())
  assert done and done[-1] < 4

  resumed = subprocess.run(cmd(wd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from' in resumed.stdout
  result = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert result['test_accuracy'] == full_result['test_accuracy']
  assert result['test_loss'] == full_result['test_loss']       # bitwise, as floats
  step_a, best_a = _final_state(tmp_path / 'full')
  step_b, best_b = _final_state(wd)
  assert step_a == step_b == 4
  _assert_trees_equal(best_a, best_b)
  # The metrics of the interrupted run's finished epochs are kept; every epoch appears.
  epochs = [json.loads(l).get('epoch') for l in open(wd / 'metrics.jsonl')]
  assert set(range(1, 6)) <= set(e for e in epochs if e)


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """A finished 3-epoch run: its directory and its final parameters and best variables."""
  wd = tmp_path_factory.mktemp('ref')
  host = synthetic_host_data(n_train=96, n_test=32)
  config = tiny_config(num_epochs=3)
  trainer = train.Trainer(config, str(wd), host)
  trainer.fit(log=lambda s: None)
  return wd, host, config, jax.device_get(trainer.final_state.params), jax.device_get(trainer.best_variables)


@pytest.mark.parametrize('damage', ['truncate', 'scramble'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference_run, damage):
  ref_dir, host, config, ref_params, ref_best = reference_run
  wd = tmp_path / 'run'
  shutil.copytree(ref_dir, wd)
  victim = _largest_file(wd / 'checkpoints' / '2' / 'state')
  blob = bytearray(open(victim, 'rb').read())
  if damage == 'truncate':
    blob = blob[:len(blob) // 2]
  else:
    mid = len(blob) // 2
    blob[mid:mid + 64] = bytes((b + 1) % 256 for b in blob[mid:mid + 64])
  open(victim, 'wb').write(bytes(blob))

  logs = []
  trainer = train.Trainer(config, str(wd), host)
  trainer.fit(log=logs.append)
  warnings = [l for l in logs if l.startswith('WARNING')]
  assert len(warnings) == 1 and 'checkpoint' in warnings[0] and 'corrupt' in warnings[0]
  assert any('resumed from' in l and 'after epoch 2' in l for l in logs)
  corrupt = os.listdir(wd / 'checkpoints' / 'corrupt')
  assert len(corrupt) == 1 and corrupt[0].startswith('2-')   # set aside, not deleted
  assert sorted(p for p in os.listdir(wd / 'checkpoints') if p.isdigit()) == ['0', '1', '2']
  # Epoch 3 was retrained from epoch 2's checkpoint and ended where the reference did.
  _assert_trees_equal(trainer.final_state.params, ref_params)
  _assert_trees_equal(trainer.best_variables, ref_best)


def test_evaluating_a_directory_without_checkpoints_is_a_clear_error(tmp_path):
  env = run_env()
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.evaluate', f'--workdir={tmp_path}'], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith('error: ') and 'not a run directory' in lines[-1]
  assert 'Traceback' not in out.stderr
