"""Faults a hostile user can cause, each in a real process: one clear line, nothing lost.

Run as root (as CI is) for the file-system faults: a read-only bind mount and an immutable
directory (``chattr +i``) are what ``chmod`` cannot do to root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, cli_overrides, run_env, synthetic_host_data, tiny_config, write_imported_dataset
from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import errors, rundir
from pixelreg_jax import trainer as trainer_lib
from pixelreg_jax.trainer import create_trainer, train_loop

_SAVE_ON_A_LOCKED_DIRECTORY = textwrap.dedent('''
    import subprocess, sys, types
    import numpy as np
    from pixelreg_jax import checkpoint, cli

    def state(seed):   # what CheckpointManager.save reads from a TrainState
      w = np.random.default_rng(seed).standard_normal((64, 1024)).astype(np.float32)
      return types.SimpleNamespace(step=np.array(seed, np.int32), params={'w': w}, batch_stats={}, sim_stats={},
                                   opt_state=())

    directory, how = sys.argv[1], sys.argv[2]
    manager = checkpoint.CheckpointManager(directory)
    manager.save(0, state(1), {'w': np.ones(3, np.float32)}, {'epoch': 0})
    checkpoints = f'{directory}/checkpoints'
    if how == 'read-only mount':
      subprocess.run(['mount', '--bind', checkpoints, checkpoints], check=True)
      subprocess.run(['mount', '-o', 'remount,ro,bind', checkpoints], check=True)
    else:
      subprocess.run(['chattr', '+i', checkpoints], check=True)
    with cli.one_line_errors():
      manager.save(1, state(2), {'w': np.ones(3, np.float32)}, {'epoch': 1})
    print('saved', flush=True)
''')


def _can(command: list[str], directory) -> bool:
  """Whether ``command`` (mount / chattr) works here, on a scratch directory."""
  probe = directory / 'probe'
  probe.mkdir()
  try:
    ok = subprocess.run(command + [str(probe)] if command[0] == 'chattr' else command + [str(probe), str(probe)],
                        capture_output=True).returncode == 0
    subprocess.run(['umount', str(probe)] if command[0] == 'mount' else ['chattr', '-i', str(probe)],
                   capture_output=True)
    return ok
  except FileNotFoundError:
    return False
  finally:
    shutil.rmtree(probe, ignore_errors=True)


@pytest.mark.parametrize('how', ['read-only mount', 'immutable directory'])
def test_a_save_into_a_read_only_directory_is_one_line_not_a_hang(tmp_path, how):
  """It used to print the error and never exit (orbax's background threads waiting forever)."""
  command = ['mount', '--bind'] if how == 'read-only mount' else ['chattr', '+i']
  if os.geteuid() != 0 or not _can(command, tmp_path):
    pytest.skip(f'{command[0]} is not available to this user')
  wd = tmp_path / 'run'
  try:
    out = subprocess.run([sys.executable, '-c', _SAVE_ON_A_LOCKED_DIRECTORY, str(wd), how], cwd=ROOT,
                         env=run_env(), capture_output=True, text=True, timeout=120)
  finally:
    subprocess.run(['umount', str(wd / 'checkpoints')], capture_output=True)
    subprocess.run(['chattr', '-i', str(wd / 'checkpoints')], capture_output=True)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith('error: could not save the checkpoint of epoch 2')
  assert ('Read-only file system' if how == 'read-only mount' else 'Operation not permitted') in lines[0]
  assert ckpt_lib.CheckpointManager(str(wd), read_only=True).all_steps() == [0]


def test_a_run_directory_from_before_a_config_field_existed_is_read_with_its_default(tmp_path):
  """config.json written before ``population`` (and other fields) existed: evaluation and
  analysis read it with the defaults, and a resume accepts it."""
  c = tiny_config()
  saved = json.loads(c.to_json_best_effort())
  for field in ('population', 'fused_pass', 'seed_parallelism'):
    del saved[field]
  del saved['reg']['keep_size']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  loaded = rundir.load_config(str(tmp_path))
  assert loaded.population == '' and loaded.fused_pass is False and loaded.reg.keep_size is False
  assert loaded.reg.alpha == c.reg.alpha and loaded.model.width == c.model.width
  rundir.check_config(c, str(tmp_path))   # the same run: accepted


@pytest.mark.parametrize('text,what', [('[1, 2]', 'holds a JSON list'), ('{"reg": ', 'is unreadable')])
def test_a_config_json_that_is_not_a_config_is_one_line(tmp_path, text, what):
  (tmp_path / 'config.json').write_text(text)
  for fn in (rundir.load_config, rundir.read_config):   # evaluation; the resume check
    with pytest.raises(errors.ConfigError, match=what) as e:
      fn(str(tmp_path))
    assert '\n' not in str(e.value)


def test_fields_that_do_not_change_the_model_are_one_list():
  """Bookkeeping, data location and how the step computes: a resume may change them and the
  report counts two runs differing only in them once; anything else is another model."""
  a = json.loads(tiny_config().to_json_best_effort())
  b = json.loads(tiny_config(**{'checkpoint.keep': 9, 'fused_pass': True, 'data_dir': '/elsewhere',
                                'log_every_steps': 7}).to_json_best_effort())
  assert rundir.model_fields(a) == rundir.model_fields(b)
  for field, value in (('num_epochs', 9), ('train_subset', 5), ('reg.alpha', 3.0), ('dataset', 'mnist')):
    c = json.loads(tiny_config(**{field: value}).to_json_best_effort())
    assert rundir.model_fields(c) != rundir.model_fields(a), field



# ---------------------------------------------------------------- what a checkpoint holds


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished 2-epoch run trained through train_and_evaluate's checks: (dir, host, config)."""
  wd = tmp_path_factory.mktemp('finished')
  host = synthetic_host_data(n_train=96, n_test=32)
  config = tiny_config(num_epochs=2)
  rundir.write_config(config, str(wd))
  train_loop(create_trainer(config, host), str(wd), log=lambda s: None)
  return wd, host, config


def _copy(finished_run, tmp_path):
  wd, host, config = finished_run
  shutil.copytree(wd, tmp_path / 'run')
  return tmp_path / 'run', host, config


def _meta_path(wd, epoch):
  return wd / 'checkpoints' / str(epoch - 1) / 'meta' / 'metadata'


def _change_meta(wd, epoch, field, value):
  path = _meta_path(wd, epoch)
  meta = json.loads(path.read_text())
  assert meta[field] != value
  meta[field] = value
  path.write_text(json.dumps(meta))


def test_a_changed_epoch_in_a_checkpoints_metadata_is_detected_on_resume(tmp_path, finished_run):
  """"epoch": 1 → 0 in the newest checkpoint's meta made a resume train epoch 2 twice: that
  checkpoint is now corrupt, set aside, and the run resumes from the one before."""
  wd, host, config = _copy(finished_run, tmp_path)
  _change_meta(wd, 2, 'epoch', 0)
  logs = []
  fit = train_loop(create_trainer(config, host), str(wd), log=logs.append)
  assert any('checkpoint 2 is corrupt' in line and 'metadata' in line for line in logs), logs
  assert any('after epoch 1' in line for line in logs), logs    # epoch 2 retrained from checkpoint 1
  assert len(fit.history) == 1 and fit.history[0]['epoch'] == 2
  assert len(os.listdir(wd / 'checkpoints' / 'corrupt')) == 1


@pytest.mark.parametrize('field,value', [('best_epoch', [0]), ('best_val_loss', [1.0]), ('num_seeds', 2)])
def test_any_changed_value_in_a_checkpoints_metadata_is_detected_on_evaluation(tmp_path, finished_run, field, value):
  wd, _, _ = _copy(finished_run, tmp_path)
  _change_meta(wd, 2, field, value)
  run = rundir.load_run(str(wd), log=lambda s: None)
  assert run.checkpoint_epoch == 1 and 'metadata differs from its checksum' in run.fallback_reason


def test_a_resume_without_config_json_is_checked_against_the_checkpoint(tmp_path, finished_run):
  """config.json removed: the config travels in every checkpoint, and another α is refused."""
  wd, host, config = _copy(finished_run, tmp_path)
  (wd / 'config.json').unlink()
  other = tiny_config(num_epochs=3, **{'reg.alpha': 2.0})
  with pytest.raises(errors.ConfigError, match=r'reg.alpha: 4.0 there, 2.0 now') as e:
    train_loop(create_trainer(other, host), str(wd), log=lambda s: None)
  assert '\n' not in str(e.value)
  meta = json.loads(_meta_path(wd, 2).read_text())
  rundir.check_same_run(meta['config'], tiny_config(num_epochs=3), str(wd))   # the same run, trained on: fine


def test_fewer_epochs_than_trained_is_refused_before_anything_is_written(tmp_path, finished_run):
  wd, _, config = _copy(finished_run, tmp_path)
  before = (wd / 'config.json').read_text()
  with pytest.raises(errors.ConfigError, match=r'trained for 2 epochs, more than config.num_epochs=1'):
    trainer_lib.train_and_evaluate(tiny_config(num_epochs=1), str(wd))
  assert (wd / 'config.json').read_text() == before
  rundir.check_config(tiny_config(num_epochs=2), str(wd))   # as many, or more: fine
  rundir.check_config(tiny_config(num_epochs=5), str(wd))


# ---------------------------------------------------------------- command lines


@pytest.mark.parametrize('args,message', [
    (['pixelreg_jax.main', '--config.reg.alhpa=3'], "config.reg has no field 'alhpa' (did you mean 'alpha'?)"),
    (['pixelreg_jax.benchmark', '--config.reg.alhpa=3'], "config.reg has no field 'alhpa'"),
    (['pixelreg_jax.benchmark', '--seeds_list=a,b'], '--seeds_list must be a comma-separated list of positive'),
    (['pixelreg_jax.benchmark', '--repeats=0'], '0 is not a positive integer'),
    (['pixelreg_jax.benchmark', '--mode=devices', '--devices_list=64', '--config.model.width=4'],
     '--devices_list=64: only 1 device(s) here'),
])
def test_bad_command_lines_are_one_line(tmp_path, args, message):
  """A misspelt field without --config was a traceback (the default config was loaded, with the
  overrides, when the flag was defined); benchmark's lists and counts were not checked."""
  out = subprocess.run([sys.executable, '-m', *args, f'--workdir={tmp_path}'] if args[0].endswith('main')
                       else [sys.executable, '-m', *args], cwd=tmp_path, env=run_env(), capture_output=True,
                       text=True, timeout=300)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and lines and lines[-1].startswith('error: ') and message in lines[-1], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr


def test_a_model_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path):
  """Width 2048 under an 8 GiB address-space limit aborted in XLA (std::bad_alloc, exit 134; or
  an 'Out of memory' traceback): the state's size is known from its shapes before compiling."""
  import resource
  limit = 8 << 30
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=256, n_test=32)
  out = subprocess.run(
      [sys.executable, '-m', 'pixelreg_jax.main', f'--workdir={tmp_path / "run"}',
       *cli_overrides(data_dir, **{'model.width': 2048, 'num_epochs': 1})],
      cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300,
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY)))
  lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
  assert 'config.model.width=2048' in lines[0] and 'more than the' in lines[0] and 'GiB available' in lines[0]
  assert 'Traceback' not in out.stderr
