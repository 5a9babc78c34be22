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

from conftest import ROOT, run_env, tiny_config
from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import errors, rundir

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
  for fn in (rundir.load_config, lambda wd: rundir.check_config(tiny_config(), wd)):
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

