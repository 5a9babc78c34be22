"""Runs a few training steps on the first N devices and prints metrics and parameters as JSON.

Used by tests/test_parallel.py in a subprocess, because the CPU device count
(XLA_FLAGS=--xla_force_host_platform_device_count=8) is fixed when JAX starts.
    cd tests && python -m helpers.parallel_run DEVICES STEPS OUT.npz [key=value config overrides]
"""
import sys

import jax
import numpy as np

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import parallel
from pixelreg_jax.trainer import create_trainer


def parse(v):
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return {'True': True, 'False': False}.get(v, v)


def main():
  devices, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  overrides = dict(kv.split('=', 1) for kv in sys.argv[4:])
  c = tiny_config(**{k: parse(v) for k, v in overrides.items()})
  host = synthetic_host_data(n_train=96, n_test=32)
  t = create_trainer(c, host, mesh=parallel.make_mesh(jax.devices()[:devices]))
  st = t.init_state()
  order = t.epoch_order(0)
  losses = []
  for i in range(steps):
    st, m = t.step(st, order, i)
    losses.append(np.asarray(m['loss']))
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get({'params': st.params, 'batch_stats': st.batch_stats,
                                                              'sim_stats': st.sim_stats}))[0]
  arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
  sharding = str(st.params['stem_conv']['kernel'].sharding)
  np.savez(out, losses=np.stack(losses), num_devices=len(t.mesh.devices.flat), sharding=sharding, **arrays)


if __name__ == '__main__':
  main()
