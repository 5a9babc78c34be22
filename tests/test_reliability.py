"""Nothing silently wrong, as a user meets it: real processes, real files, real
signals. Each fault ends in one ``error:`` line and a non-zero exit, never in exit 0 with a
wrong result.

Slow tests (marked) train a tiny model in a subprocess until a checkpoint exists (compilation
dominates: about a minute on 2 busy CPU cores).
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT, cli_overrides, run_env, write_imported_dataset
from pixelreg_jax import data as data_lib
from pixelreg_jax import errors, rundir


def _errors(proc, status=2) -> str:
  """The single ``error:`` line of a finished process that must have failed with ``status``."""
  assert proc.returncode == status, f'exit {proc.returncode}\n{proc.stderr[-3000:]}'
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1] == errors[0]   # the last word
  return errors[0]


def _main(wd, data_dir, *extra, **overrides):
  return [sys.executable, '-m', 'pixelreg_jax.main', f'--workdir={wd}'] + cli_overrides(data_dir, **overrides) \
      + list(extra)


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      err = proc.stderr.read()[-3000:] if proc.stderr else ''
      raise AssertionError(f'the run ended early (exit {proc.returncode}): {err}')
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


# ---------------------------------------------------------------- the workdir lock

_HOLD = textwrap.dedent('''
    import sys, time
    from pixelreg_jax import cli, rundir
    path = rundir.ensure_directory(sys.argv[1])
    with cli.one_line_errors(), rundir.lock(path):
      print('locked', flush=True)
      time.sleep(float(sys.argv[2]))
''')


def _hold(path, seconds):
  return [sys.executable, '-c', _HOLD, str(path), str(seconds)]


def test_workdir_lock_excludes_a_second_process_and_dies_with_its_holder(tmp_path):
  wd = tmp_path / 'run'
  holder = subprocess.Popen(_hold(wd, 600), cwd=ROOT, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    second = subprocess.run(_hold(wd, 0), cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    line = _errors(second)
    assert f'--workdir={wd} is in use by another run (pid {holder.pid} on {socket.gethostname()})' in line
    assert 'locked' not in second.stdout
  finally:
    holder.send_signal(signal.SIGKILL)   # no clean-up runs: the kernel drops the lock
    holder.wait()
  third = subprocess.run(_hold(wd, 0), cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
  assert third.returncode == 0 and third.stdout.strip() == 'locked', third.stderr[-2000:]


def test_the_lock_is_released_on_exceptions_and_reentry_is_refused(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with rundir.lock(str(tmp_path)):
      1 / 0
  with rundir.lock(str(tmp_path)):
    assert open(tmp_path / rundir.LOCK_NAME).read().split()[0] == str(os.getpid())
    # A second open file description of the same lock, as another run would have.
    with pytest.raises(errors.ConfigError, match=rf'pid {os.getpid()} on'):
      with rundir.lock(str(tmp_path)):
        pass
  with rundir.lock(str(tmp_path)), rundir.lock(str(tmp_path), enabled=False):
    pass


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('my notes')
  with pytest.raises(errors.ConfigError, match='is an existing file, not a directory'):
    rundir.ensure_directory(str(path))
  with pytest.raises(errors.ConfigError, match='cannot be created'):
    rundir.ensure_directory(str(path / 'run'))
  assert rundir.ensure_directory(str(tmp_path / 'a' / 'b')) == str(tmp_path / 'a' / 'b')
  out = subprocess.run(_main(path, tmp_path / 'data'), cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=300)
  assert str(path) in _errors(out)
  assert path.read_text() == 'my notes'


def test_two_training_runs_on_one_workdir_the_second_stops_in_one_line(tmp_path):
  """Two runs (α=1 and α=0) started on the same fresh workdir."""
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=240, n_test=32)
  wd = tmp_path / 'run'
  first = subprocess.Popen(_main(wd, data_dir, **{'reg.alpha': 1, 'num_epochs': 50}), cwd=ROOT, env=run_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock_file = wd / rundir.LOCK_NAME
    _wait_for(lambda: lock_file.is_file() and lock_file.read_text().split()[:1] == [str(first.pid)], first)
    second = subprocess.run(_main(wd, data_dir, **{'reg.alpha': 0}), cwd=ROOT, env=run_env(), capture_output=True,
                            text=True, timeout=600)
    assert f'is in use by another run (pid {first.pid}' in _errors(second)
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  with rundir.lock(str(wd)):   # the killed run left no stale lock
    pass


# ---------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_130_and_keeps_the_checkpoints(tmp_path):
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=480, n_test=32)
  wd = tmp_path / 'run'
  cmd = _main(wd, data_dir, num_epochs=30)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (wd / 'checkpoints' / '0' / 'commit_success.txt').is_file(), proc)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  line = _errors(subprocess.CompletedProcess(cmd, proc.returncode, out, err), status=130)
  assert line == 'error: interrupted (Ctrl-C)'
  assert not (wd / 'result.json').exists()
  # The finished epochs' checkpoints are intact: evaluation reads the newest, verified.
  assert rundir.load_run(str(wd), log=lambda s: None).fallback_reason is None


@pytest.mark.parametrize('moment', ['loading', 'compiling'])
def test_ctrl_c_while_starting_is_one_line_130(tmp_path, moment):
  """Interrupted while loading data (just after the workdir appears) or while compiling (just
  after the 'training ...' line): no traceback, no crash in Python's teardown (an interrupted XLA
  lowering made it exit -11 after the error line), no interrupt lost (exit 0 after all epochs)."""
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=480, n_test=32)
  wd = tmp_path / 'run'
  cmd = _main(wd, data_dir, num_epochs=30)
  err_path = tmp_path / 'stderr.txt'
  with open(err_path, 'w') as err_file:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=err_file, text=True)
    if moment == 'loading':
      _wait_for(lambda: wd.is_dir(), proc)   # past flag parsing: the run has begun
    else:
      _wait_for(lambda: 'trainer.py' in err_path.read_text() and 'training ' in err_path.read_text(), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
  err = err_path.read_text()
  assert _errors(subprocess.CompletedProcess(cmd, proc.returncode, out, err), status=130) \
      == 'error: interrupted (Ctrl-C)'


# ---------------------------------------------------------------- a failed save

@pytest.mark.slow
def test_a_full_disk_during_training_stops_at_once_in_one_line(tmp_path):
  """After the first checkpoint, the running process's file-size limit is lowered (prlimit):
  its next checkpoint write fails with EFBIG like on a full disk."""
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=480, n_test=32)
  wd = tmp_path / 'run'
  cmd = _main(wd, data_dir, num_epochs=30)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (wd / 'checkpoints' / '0' / 'commit_success.txt').is_file(), proc)
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
  out, err = proc.communicate(timeout=600)
  line = _errors(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
  assert 'could not save the checkpoint of epoch' in line and 'File too large' in line
  failed_epoch = int(line.split('checkpoint of epoch ')[1].split()[0])
  saved = sorted(int(p) for p in os.listdir(wd / 'checkpoints') if p.isdigit())
  assert failed_epoch >= 2 and saved == list(range(failed_epoch - 1))[-3:]   # keep=3, none lost or half
  assert not (wd / 'result.json').exists()
  run = rundir.load_run(str(wd), log=lambda s: None)   # the earlier checkpoints read back, verified
  assert run.checkpoint_epoch == failed_epoch - 1 and run.fallback_reason is None


# ---------------------------------------------------------------- data

def test_out_of_range_labels_stop_training_before_compiling(tmp_path):
  """Issue 12's NaN trigger: an imported npz with a label 10 for 10 classes."""
  data_dir = tmp_path / 'data'
  host = write_imported_dataset(data_dir, n_train=120, n_test=32)
  labels = host['train_y'].copy()
  labels[5] = 10
  path = data_lib.imported_path(str(data_dir), 'fashion_mnist', 'train')
  data_lib.save_npz(path, host['train_x'], labels)
  env = dict(run_env(), JAX_LOG_COMPILES='1')
  out = subprocess.run(_main(tmp_path / 'run', data_dir), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  line = _errors(out)
  assert path in line and '1 label(s) outside [0, 10)' in line
  assert 'Compiling' not in out.stderr


def test_an_unknown_split_is_named_as_such(tmp_path):
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=120, n_test=32)
  out = subprocess.run(_main(tmp_path / 'run', data_dir, **{'reg.split': 'validation'}), cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=300)
  assert "no such split 'validation' for fashion_mnist (splits: train, test)" in _errors(out)


def test_a_truncated_imported_npz_is_one_line(tmp_path):
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=120, n_test=32)
  path = data_lib.imported_path(str(data_dir), 'fashion_mnist', 'test')
  raw = open(path, 'rb').read()
  open(path, 'wb').write(raw[:len(raw) // 3])
  out = subprocess.run(_main(tmp_path / 'run', data_dir), cwd=ROOT, env=run_env(), capture_output=True, text=True,
                       timeout=300)
  line = _errors(out)
  assert path in line and 'damaged or truncated' in line
  np.testing.assert_equal(os.path.getsize(path), len(raw) // 3)   # left as it was, for the user to look at
