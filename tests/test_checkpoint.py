"""Checkpoints: resume after a real SIGKILL ends bitwise where an uninterrupted run does; every
restore is verified; corrupt checkpoints are set aside (training) or skipped (evaluation) and
recorded, never used; a checkpoint of another model is refused and kept; a failed save is one
line and leaves the earlier checkpoints intact."""
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, cli_overrides, run_env, synthetic_host_data, tiny_config, write_imported_dataset
from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import errors, rundir
from pixelreg_jax.trainer import create_trainer, train_loop


def _best_of(workdir, step, template):
  """The best variables stored in checkpoint ``step`` (verified)."""
  manager = ckpt_lib.CheckpointManager(str(workdir), read_only=True)
  return manager._restore_step(step, {'best': template})['best']


def _final_state(workdir):
  run = rundir.load_run(str(workdir), log=lambda s: None)
  last = ckpt_lib.CheckpointManager(str(workdir), read_only=True).all_steps()[-1]
  return last, _best_of(workdir, last, run.variables)


def _trees_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _assert_trees_equal(a, b):
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))   # same structure, bit-equal leaves


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
  assert 'resumed from' in resumed.stdout + resumed.stderr
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
  """A finished 3-epoch run (checkpoints 0, 1, 2 and config.json): its directory, data, config,
  final parameters and best variables."""
  wd = tmp_path_factory.mktemp('ref')
  host = synthetic_host_data(n_train=96, n_test=32)
  config = tiny_config(num_epochs=3)
  trainer = create_trainer(config, host)
  fit = train_loop(trainer, str(wd), log=lambda s: None)
  (wd / 'config.json').write_text(config.to_json_best_effort())
  return wd, host, config, jax.device_get(fit.final_state.params), jax.device_get(fit.best.variables)


def _logged(capsys, caplog) -> str:
  """Everything printed or logged so far (train may print or log through absl)."""
  out = capsys.readouterr()
  return out.out + out.err + '\n'.join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('damage', ['truncate', 'scramble'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference_run, damage, capsys, caplog):
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

  capsys.readouterr()
  caplog.set_level(logging.INFO, logger='absl')
  trainer = create_trainer(config, host)
  fit = train_loop(trainer, str(wd))
  logged = _logged(capsys, caplog)
  assert 'checkpoint 3 is corrupt' in logged and 'corrupt/2-' in logged   # says why and where it went
  assert 'resumed from' in logged and 'after epoch 2' in logged
  corrupt = os.listdir(wd / 'checkpoints' / 'corrupt')
  assert len(corrupt) == 1 and corrupt[0].startswith('2-')   # set aside, not deleted
  assert sorted(p for p in os.listdir(wd / 'checkpoints') if p.isdigit()) == ['0', '1', '2']
  # Epoch 3 was retrained from epoch 2's checkpoint and ended where the reference did.
  _assert_trees_equal(fit.final_state.params, ref_params)
  _assert_trees_equal(fit.best.variables, ref_best)


def test_evaluation_restore_is_verified_and_records_a_fallback(tmp_path, reference_run, monkeypatch):
  """A checkpoint whose stored best variables differ from the checksum saved beside them is
  skipped by evaluation (read-only: nothing moved), and the run says which one it used."""
  ref_dir, _, _, _, ref_best = reference_run
  wd = tmp_path / 'run'
  shutil.copytree(ref_dir, wd)
  clean = rundir.load_run(str(wd), log=lambda s: None)
  assert clean.checkpoint_epoch == 3 and clean.fallback_reason is None
  _assert_trees_equal(clean.variables, ref_best)
  # Rewrite checkpoint 3's meta as if best had held other values when it was saved.
  meta_path = wd / 'checkpoints' / '2' / 'meta' / 'metadata'
  meta = json.loads(meta_path.read_text())
  meta['checksums']['best'] = ckpt_lib.checksum(jax.tree.map(lambda v: v + 1, clean.variables))
  meta_path.write_text(json.dumps(meta))
  logs = []
  run = rundir.load_run(str(wd), log=logs.append)
  assert run.checkpoint_epoch == 2
  assert 'checkpoint 3 is corrupt' in run.fallback_reason and 'best differs from its checksum' in run.fallback_reason
  assert len(logs) == 1 and 'checkpoint 3 is corrupt' in logs[0]
  _assert_trees_equal(run.variables, _best_of(ref_dir, 1, ref_best))
  assert sorted(os.listdir(wd / 'checkpoints')) == ['0', '1', '2']   # read-only: nothing moved


def test_bit_flips_in_best_never_change_the_evaluated_weights_silently(tmp_path, reference_run):
  """An attack on the data: single bit flips anywhere in the latest checkpoint's ``best`` files (byte
  positions drawn uniformly over all its bytes). Each trial either restores exactly the saved
  weights, or skips to the previous checkpoint and says so, or refuses; never other weights."""
  ref_dir, _, _, _, ref_best = reference_run
  previous = _best_of(ref_dir, 1, ref_best)
  root = ref_dir / 'checkpoints' / '2' / 'best'
  files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
  sizes = [os.path.getsize(root / f) for f in files]
  rng = random.Random(12)
  outcomes = []
  for trial in range(12):
    wd = tmp_path / f't{trial}'
    shutil.copytree(ref_dir, wd)
    pos = rng.randrange(sum(sizes))
    k = next(i for i, c in enumerate(np.cumsum(sizes)) if pos < c)
    path = wd / 'checkpoints' / '2' / 'best' / files[k]
    blob = bytearray(path.read_bytes())
    blob[pos - (int(np.cumsum(sizes)[k]) - sizes[k])] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(blob))
    try:
      run = rundir.load_run(str(wd), log=lambda s: None)
    except errors.CheckpointError:   # e.g. a flip in the metadata's shapes: refused, also safe
      outcomes.append('refused')
      continue
    if run.fallback_reason is None:
      assert run.checkpoint_epoch == 3 and _trees_equal(run.variables, ref_best), f'flip in {files[k]} went unnoticed'
      outcomes.append('intact')
    else:
      assert run.checkpoint_epoch == 2 and _trees_equal(run.variables, previous)
      outcomes.append('fallback')
    shutil.rmtree(wd)
  assert 'fallback' in outcomes, outcomes   # most bytes are array data: their flips are caught


def test_a_checkpoint_of_another_width_is_refused_not_set_aside(tmp_path, reference_run):
  """config.json missing and the model now wider: training must stop with one clear line, keep
  every checkpoint where it is, and not start from scratch."""
  ref_dir, host, config, _, _ = reference_run
  wd = tmp_path / 'run'
  shutil.copytree(ref_dir, wd)
  (wd / 'config.json').unlink()
  wider = tiny_config(num_epochs=4, **{'model.width': 8})
  trainer = create_trainer(wider, host)
  with pytest.raises(errors.CheckpointError, match='holds a different model') as e:
    train_loop(trainer, str(wd), log=lambda s: None)
  msg = str(e.value)
  assert '\n' not in msg and 'use a new --workdir' in msg and str(wd) in msg
  assert 'float32[1, 4] there, float32[1, 8] now' in msg   # the first differing array (a BatchNorm's)
  assert sorted(os.listdir(wd / 'checkpoints')) == ['0', '1', '2']           # nothing moved, nothing new


def test_a_model_with_a_new_parameter_is_refused_in_evaluation(tmp_path, reference_run):
  """A code change that adds a parameter: the checkpoint is valid but of another model."""
  ref_dir, _, _, _, ref_best = reference_run
  template = jax.tree.map(np.zeros_like, ref_best)
  template['params']['extra'] = {'kernel': np.zeros((1, 3), np.float32)}
  manager = ckpt_lib.CheckpointManager(str(ref_dir), read_only=True)
  with pytest.raises(errors.CheckpointError, match=r'params/extra/kernel is not in the checkpoint'):
    manager.restore_best(template)
  del template['params']['head']
  with pytest.raises(errors.CheckpointError, match=r'and \d+ more difference'):
    manager.restore_best(template)


def test_describe_tree_and_differences_by_hand():
  saved = {'params': {'a': jnp.zeros((2, 3)), 'b': jnp.zeros(4, jnp.int32)}, 'opt': ({'mu': jnp.zeros(1)},)}
  assert ckpt_lib.describe_tree(saved) == {'params/a': ((2, 3), 'float32'), 'params/b': ((4,), 'int32'),
                                           'opt/0/mu': ((1,), 'float32')}
  now = {'params': {'a': jnp.zeros((2, 4)), 'c': jnp.zeros(1)}, 'opt': ({'mu': jnp.zeros(1)},)}
  assert ckpt_lib.tree_differences(ckpt_lib.describe_tree(saved), ckpt_lib.describe_tree(now)) == [
      'params/a is float32[2, 3] there, float32[2, 4] now',
      'params/b is in the checkpoint but not in the model',
      'params/c is not in the checkpoint']


def test_checksum_is_a_crc32_of_dtype_shape_and_bytes():
  """Against zlib on the same byte stream, and sensitive to one flipped bit, a shape and a dtype."""
  import zlib
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.array([7], np.int32)
  want = zlib.crc32(b.tobytes(), zlib.crc32(b"<i4(1,)", zlib.crc32(a.tobytes(), zlib.crc32(b"<f4(2, 3)"))))
  assert ckpt_lib.checksum({'a': a, 'b': b}) == f'crc32:{want:08x}'
  flipped = a.copy()
  flipped.view(np.uint32)[1, 2] ^= 1
  assert ckpt_lib.checksum({'a': flipped, 'b': b}) != ckpt_lib.checksum({'a': a, 'b': b})
  assert ckpt_lib.checksum({'a': a.reshape(3, 2), 'b': b}) != ckpt_lib.checksum({'a': a, 'b': b})
  assert ckpt_lib.checksum({'a': a, 'b': b.astype(np.uint32)}) != ckpt_lib.checksum({'a': a, 'b': b})


_FULL_DISK = textwrap.dedent('''
    import resource, sys, types
    import numpy as np
    from pixelreg_jax import checkpoint, cli

    def state(seed):   # what CheckpointManager.save reads from a TrainState
      w = np.random.default_rng(seed).standard_normal((64, 1024)).astype(np.float32)   # 256 kB
      return types.SimpleNamespace(step=np.array(seed, np.int32), params={'w': w}, batch_stats={}, sim_stats={},
                                   opt_state=())

    manager = checkpoint.CheckpointManager(sys.argv[1])
    manager.save(0, state(1), {'w': np.ones(3, np.float32)}, {'epoch': 0})
    # From now on no file may grow past 50 kB: writes fail with EFBIG ("File too large") as on a
    # full disk (Python ignores SIGXFSZ, so the write returns the error).
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
    with cli.one_line_errors():
      manager.save(1, state(2), {'w': np.ones(3, np.float32)}, {'epoch': 1})
    print('saved', flush=True)
''')


def test_a_failed_save_is_one_line_at_once_and_keeps_the_earlier_checkpoint(tmp_path):
  """A real write failure (the kernel's file-size limit, EFBIG) in a real process."""
  wd = tmp_path / 'run'
  proc = subprocess.run([sys.executable, '-c', _FULL_DISK, str(wd)], cwd=ROOT, env=run_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'saved' not in proc.stdout
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert 'Traceback' not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]   # orbax's tracebacks held back
  assert lines[0].startswith('error: could not save the checkpoint of epoch 2 in ')
  assert 'File too large' in lines[0] and 'earlier epochs are intact' in lines[0]
  manager = ckpt_lib.CheckpointManager(str(wd), read_only=True)
  assert manager.all_steps() == [0]
  want = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
  out = manager.restore({'state': {'step': np.zeros((), np.int32), 'params': {'w': np.zeros((64, 1024), np.float32)},
                                   'batch_stats': {}, 'sim_stats': {}, 'opt_state': ()}}, set_aside=False)
  assert out.step == 0 and out.fallback_reason is None
  np.testing.assert_array_equal(np.asarray(out.items['state']['params']['w']), want)


def test_evaluating_a_directory_without_checkpoints_is_a_clear_error(tmp_path):
  env = run_env()
  out = subprocess.run([sys.executable, '-m', 'pixelreg_jax.evaluate', f'--workdir={tmp_path}'], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith('error: ') and 'not a run directory' in lines[-1]
  assert 'Traceback' not in out.stderr
