"""Data parallelism over a device mesh, many seeds in one program, mixed precision."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_env, synthetic_host_data, tiny_config
from pixelreg_jax import config as config_lib
from pixelreg_jax import parallel, train

HELPER = os.path.join(ROOT, 'tests', 'helpers', 'parallel_run.py')
STABLE = ['reg.alpha=1.0', 'reg.threshold=0.8', 'optim.learning_rate=0.02', 'batch_size=16', 'reg.pairs_per_step=8']


def _run(tmp_path, devices, steps, extra=(), name='out'):
  env = run_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  out = tmp_path / f'{name}.npz'
  proc = subprocess.run([sys.executable, HELPER, str(devices), str(steps), str(out)] + STABLE + list(extra),
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def test_eight_devices_follow_the_one_device_trajectory(tmp_path):
  one, eight = _run(tmp_path, 1, 2, name='one'), _run(tmp_path, 8, 2, name='eight')
  assert int(eight['num_devices']) == 8 and int(one['num_devices']) == 1
  # Same global batch: the same losses and parameters up to float reduction order.
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-5)
  keys = [k for k in one if k.startswith("['")]
  assert len(keys) > 50
  for k in keys:
    scale = max(1.0, float(np.abs(one[k]).max()))
    np.testing.assert_allclose(eight[k], one[k], atol=2e-5 * scale, err_msg=k)


def test_batch_must_divide_over_devices():
  mesh = parallel.make_mesh([jax.devices()[0]] * 1)
  parallel.check_batch(64, mesh, 16)
  fake = type('Mesh', (), {'devices': np.zeros(8)})()
  with pytest.raises(config_lib.ConfigError, match='batch_size=60 does not divide over 8 devices'):
    parallel.check_batch(60, fake, 16)
  with pytest.raises(config_lib.ConfigError, match='pairs_per_step=12'):
    parallel.check_batch(64, fake, 12)


def _steps(trainer, n):
  st = trainer.initial_state()
  order = trainer.epoch_order(trainer.keys.shuffle, trainer.train_indices_dev, 0)
  for i in range(n):
    st, _ = trainer.train_step(st, trainer.keys, order, trainer.data, i)
  return jax.device_get(st)


@pytest.mark.parametrize('mode', ['vmap', 'loop'])
def test_stacked_seeds_equal_single_runs(mode):
  host = synthetic_host_data(n_train=96, n_test=32)
  overrides = {'reg.alpha': 1.0, 'reg.threshold': 0.8, 'optim.learning_rate': 0.02, 'seed_parallelism': mode}
  stacked = _steps(train.Trainer(tiny_config(num_seeds=3, seed=5, **overrides), None, host), 2)
  stem = stacked.params['stem_conv']['kernel']
  assert stem.shape[0] == 3
  assert not np.allclose(stem[0], stem[1]) and not np.allclose(stem[1], stem[2])   # K different models
  # Seed 5+k of the stacked (vmapped) run is the single run with seed 5+k: own init, split,
  # data order and pairs. (Two steps: this loss amplifies float reordering over many steps.)
  for k in (2,):
    single = _steps(train.Trainer(tiny_config(num_seeds=1, seed=5 + k, **overrides), None, host), 2)
    for a, b in zip(jax.tree.leaves((stacked.params, stacked.batch_stats, stacked.sim_stats)),
                    jax.tree.leaves((single.params, single.batch_stats, single.sim_stats))):
      np.testing.assert_allclose(a[k], b[0], rtol=1e-4, atol=2e-5)


def test_half_precision_step_keeps_float32_master_params():
  host = synthetic_host_data(n_train=64, n_test=16)
  t = train.Trainer(tiny_config(half_precision=True), None, host)
  st = t.initial_state()
  order = t.epoch_order(t.keys.shuffle, t.train_indices_dev, 0)
  st, m = t.train_step(st, t.keys, order, t.data, 0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(st.params))
  momentum = [x for x in jax.tree.leaves(st.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert momentum and all(x.dtype == jnp.float32 for x in momentum)
  assert m['loss'].dtype == jnp.float32 and np.all(np.isfinite(np.asarray(m['loss'])))
  # The network computes in bfloat16.
  v = jax.tree.map(lambda x: x[0], t.eval_variables(st))
  _, taps = t.model.apply(v, jnp.zeros((2, 32, 32, 1)), train=False)
  assert all(tap.dtype == jnp.bfloat16 for tap in taps)
