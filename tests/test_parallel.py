"""Data parallelism over a device mesh, many seeds in one program, mixed precision."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_env, synthetic_host_data, tiny_config
from pixelreg_jax import errors, parallel
from pixelreg_jax.trainer import create_trainer

TESTS = os.path.join(ROOT, 'tests')   # run from here, `-m helpers.parallel_run` imports conftest without sys.path edits
STABLE = ['reg.alpha=1.0', 'reg.threshold=0.8', 'optim.learning_rate=0.02', 'batch_size=16', 'reg.pairs_per_step=8']


def _run(tmp_path, devices, steps, extra=(), name='out'):
  env = run_env()
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  out = tmp_path / f'{name}.npz'
  proc = subprocess.run([sys.executable, '-m', 'helpers.parallel_run', str(devices), str(steps), str(out)] + STABLE +
                        list(extra), cwd=TESTS, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def test_eight_devices_take_the_one_device_step(tmp_path):
  one, eight = _run(tmp_path, 1, 1, name='one'), _run(tmp_path, 8, 1, name='eight')
  assert int(eight['num_devices']) == 8 and int(one['num_devices']) == 1
  # Same global batch: the same loss, parameters, BatchNorm and similarity statistics up to float
  # reduction order (measured: <= 1.2e-7 with 1, 2 and 8 devices). One step only: the second
  # step's update amplifies these 1e-7 differences (measured: 2.5e-4 in the stem kernel after two
  # steps, 1 vs 8 devices, while both losses still agree to 2e-7).
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-6)
  keys = [k for k in one if k.startswith("['")]
  assert len(keys) > 50
  for k in keys:
    scale = max(1.0, float(np.abs(one[k]).max()))
    np.testing.assert_allclose(eight[k], one[k], rtol=0, atol=1e-6 * scale, err_msg=k)


def test_batch_must_divide_over_devices():
  mesh = parallel.make_mesh([jax.devices()[0]] * 1)
  parallel.check_batch(64, mesh, 16)
  fake = type('Mesh', (), {'devices': np.zeros(8)})()
  with pytest.raises(errors.ConfigError, match='batch_size=60 does not divide over 8 devices'):
    parallel.check_batch(60, fake, 16)
  with pytest.raises(errors.ConfigError, match='pairs_per_step=12'):
    parallel.check_batch(64, fake, 12)


def test_mesh_is_one_data_axis_over_the_given_devices():
  devices = jax.devices()
  mesh = parallel.make_mesh(devices)
  assert mesh.axis_names == ('data',) and list(mesh.devices.flat) == devices
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)      # shardings are passed to jit, not typed
  x = jax.device_put(np.arange(8.0 * len(devices)), parallel.batch_sharding(mesh))
  assert x.sharding.spec == jax.sharding.PartitionSpec('data')
  assert parallel.replicated(mesh).is_fully_replicated


_LAUNCH_VARS = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_NTASKS',
                'OMPI_COMM_WORLD_SIZE')


@pytest.mark.parametrize('env,expected', [
    ({}, None),                                                            # one process: nothing to join
    ({'SLURM_NTASKS': '1'}, None),                                         # a one-task SLURM job
    ({'SLURM_NTASKS': '4'}, {'num_processes': None, 'process_id': None}),  # JAX reads SLURM's variables
    ({'OMPI_COMM_WORLD_SIZE': '2'}, {'num_processes': None, 'process_id': None}),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'},
     {'num_processes': 2, 'process_id': 1}),
])
def test_distributed_initialize_only_for_several_processes(monkeypatch, env, expected):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  for k in _LAUNCH_VARS:
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert parallel.maybe_initialize_distributed() == (expected is not None)
  assert calls == ([expected] if expected is not None else [])


def test_cpu_processes_exchange_through_gloo():
  """parallel.py relies on JAX's default CPU collectives for multi-process CPU runs (test_multihost)."""
  assert jax.config.jax_cpu_collectives_implementation == 'gloo'


@pytest.mark.parametrize('env,match', [
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234'}, 'set JAX_NUM_PROCESSES and JAX_PROCESS_ID'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'},
     "JAX_NUM_PROCESSES='two' is not an integer"),
])
def test_incomplete_coordinator_settings_are_one_clear_error(monkeypatch, env, match):
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: pytest.fail('must not initialise'))
  for k in _LAUNCH_VARS:
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(errors.ConfigError, match=match):
    parallel.maybe_initialize_distributed()


def _steps(trainer, n):
  st = trainer.init_state()
  order = trainer.epoch_order(0)
  for i in range(n):
    st, _ = trainer.step(st, order, i)
  return jax.device_get(st)


# 'loop' is slow here and also covered by test_population.
@pytest.mark.parametrize('mode', ['vmap', pytest.param('loop', marks=pytest.mark.slow)])
def test_stacked_seeds_equal_single_runs(mode):
  host = synthetic_host_data(n_train=96, n_test=32)
  overrides = {'reg.alpha': 1.0, 'reg.threshold': 0.8, 'optim.learning_rate': 0.02, 'seed_parallelism': mode}
  stacked = _steps(create_trainer(tiny_config(num_seeds=3, seed=5, **overrides), host), 2)
  stem = stacked.params['stem_conv']['kernel']
  assert stem.shape[0] == 3
  assert not np.allclose(stem[0], stem[1]) and not np.allclose(stem[1], stem[2])   # K different models
  # Seed 5+k of the stacked (vmapped) run is the single run with seed 5+k: own init, split,
  # data order and pairs. (Two steps: this loss amplifies float reordering over many steps.)
  for k in (2,):
    single = _steps(create_trainer(tiny_config(num_seeds=1, seed=5 + k, **overrides), host), 2)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[k], stacked.variables()),
                                jax.tree.map(lambda x: x[0], single.variables()), rtol=1e-4, atol=2e-5)


def test_half_precision_step_keeps_float32_master_params():
  host = synthetic_host_data(n_train=64, n_test=16)
  t = create_trainer(tiny_config(half_precision=True), host)
  st = t.init_state()
  st, m = t.step(st, t.epoch_order(0), 0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(st.params))
  momentum = [x for x in jax.tree.leaves(st.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert momentum and all(x.dtype == jnp.float32 for x in momentum)
  assert m['loss'].dtype == jnp.float32 and np.all(np.isfinite(np.asarray(m['loss'])))
  # The network computes in bfloat16.
  v = jax.tree.map(lambda x: x[0], st.variables())
  _, taps = t.model.apply(v, jnp.zeros((2, 32, 32, 1)), train=False)
  assert all(tap.dtype == jnp.bfloat16 for tap in taps)
