"""A population (several (α, Th) settings × seeds in one program): each member trains exactly as
the same model trained alone."""
import jax
import numpy as np

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import config as config_lib
from pixelreg_jax import population
from pixelreg_jax.trainer import create_trainer


def _steps(trainer, n):
  state = trainer.init_state()
  order = trainer.epoch_order(0)
  for i in range(n):
    state, metrics = trainer.step(state, order, i)
  return jax.device_get(state), jax.device_get(metrics)


def test_population_members_equal_models_trained_alone():
  host = synthetic_host_data()
  population = create_trainer(tiny_config(population='0:0,4:0.2', num_seeds=1, seed=3), host)
  assert population.M == 2
  np.testing.assert_array_equal(population.members.alpha, [0.0, 4.0])
  pop_state, pop_metrics = _steps(population, 3)
  for m, (alpha, th) in enumerate([(0.0, 0.0), (4.0, 0.2)]):
    alone = create_trainer(tiny_config(seed=3, **{'reg.alpha': alpha, 'reg.threshold': th}), host)
    state, metrics = _steps(alone, 3)
    np.testing.assert_allclose(pop_metrics['loss'][m], metrics['loss'][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(pop_state.variables()), jax.tree.leaves(state.variables())):
      b = np.asarray(b[0], np.float64)
      np.testing.assert_allclose(np.asarray(a[m], np.float64), b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1e-6))
    if alpha == 0:   # no similarity pass reached this member's running means or BN statistics
      assert 'sim_loss' not in metrics
      assert all(np.all(x[m] == 0) for x in jax.tree.leaves(pop_state.sim_stats))


def test_population_settings_and_member_layout():
  c = tiny_config(population='0:0, 4:0.8 ,10:0.8', num_seeds=2, seed=5)
  assert config_lib.settings(c) == [(0.0, 0.0), (4.0, 0.8), (10.0, 0.8)]
  m = population.members(c)
  np.testing.assert_array_equal(m.alpha, [0, 0, 4, 4, 10, 10])
  np.testing.assert_array_equal(m.seed, [5, 6, 5, 6, 5, 6])
  np.testing.assert_allclose(m.threshold, [0, 0, 0.8, 0.8, 0.8, 0.8])
  assert config_lib.setting_name(4.0, 0.8) == 'a4_th0.8'
  assert config_lib.settings(tiny_config()) == [(4.0, 0.2)]
