"""The fused pass (one network pass over the 64 + 16 + 16 images of a step) equals the release's
three passes: BatchNorm statistics per group, running statistics chained in order."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models, regularizers, train


def _close(a, b, rtol=2e-5, atol=2e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def _close_to_scale(a, b, tol=1e-5):
  """Float32 agreement relative to each leaf's own scale (sums reduced in another order differ
  by a few ulps of the largest term, not of each element)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(x, y, rtol=0, atol=tol * max(np.abs(y).max(), 1e-6))


def test_batchnorm_equals_flax_batchnorm():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 3)) * 2 + 1
  ours, ref = models.BatchNorm(), nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  v = ours.init(jax.random.PRNGKey(1), x, True)
  y, upd = ours.apply(v, x, True, mutable=['batch_stats'])
  y_ref, upd_ref = ref.apply(v, x, mutable=['batch_stats'])
  _close(y, y_ref)
  _close(upd, upd_ref)
  _close(ours.apply({**v, **upd}, x, False), nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(
      {**v, **upd_ref}, x))


def test_grouped_batchnorm_equals_consecutive_separate_batches():
  x = jax.random.normal(jax.random.PRNGKey(2), (9, 4, 4, 3)) * 3 - 1
  bn = models.BatchNorm()
  v = bn.init(jax.random.PRNGKey(1), x, True)
  y, upd = bn.apply(v, x, True, groups=(4, 2, 3), mutable=['batch_stats'])
  outs, stats = [], v
  for lo, hi in ((0, 4), (4, 6), (6, 9)):   # three passes, each updating the running statistics
    out, stats = bn.apply(stats, x[lo:hi], True, mutable=['batch_stats'])
    stats = {**v, **stats}
    outs.append(out)
  _close(y, jnp.concatenate(outs))
  _close(upd['batch_stats'], stats['batch_stats'])
  # NumPy: each group normalised by its own biased statistics.
  xn = np.asarray(x, np.float64)
  for lo, hi in ((0, 4), (4, 6), (6, 9)):
    g = xn[lo:hi]
    ref = (g - g.mean((0, 1, 2))) / np.sqrt(g.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(np.asarray(y[lo:hi]), ref, rtol=1e-4, atol=1e-5)
  # A masked-out group leaves the running statistics as after the groups before it.
  _, masked = bn.apply(v, x, True, groups=(4, 2, 3), group_mask=(True, False, False), mutable=['batch_stats'])
  _, first = bn.apply(v, x[:4], True, mutable=['batch_stats'])
  _close(masked, first)


@pytest.mark.parametrize('alpha', [4.0, 0.0])
def test_fused_step_equals_three_pass_step(alpha):
  host = synthetic_host_data()
  config = tiny_config(**{'reg.alpha': 4.0, 'reg.threshold': 0.2})
  spec = train.pipeline_spec(config)
  model = train.create_model(config)
  tx = train.create_optimizer(config, 10)
  state = jax.jit(lambda k: train.create_train_state(k, config, model, tx))(jax.random.PRNGKey(0))
  reg = regularizers.prepare(config, {'images': host['train_x'][:24], 'labels': host['train_y'][:24]})
  data = pipe.TrainData(jnp.asarray(host['train_x']), jnp.asarray(host['train_y']), reg)

  @jax.jit   # one program, not op by op
  def make_batch(data):
    batch = pipe.train_batch(data, jnp.arange(64), 1, 3, jax.random.PRNGKey(5), spec)
    return {**batch, **regularizers.pair_batch(data.reg, jax.random.PRNGKey(6), 3, 0.2, spec)}

  batch = make_batch(data)
  # A traced α (a population member): α = 0 must leave BN's running stats as after the CE pass.
  step = jax.jit(lambda s, b, a, fused: train.train_step(s, b, alpha=a, fused=fused), static_argnums=3)
  fused, m_fused = step(state, batch, alpha, True)
  three, m_three = step(state, batch, alpha, False)
  _close(m_fused, m_three)
  # One SGD step from the same state: Δθ = −lr·g and the momentum buffer is g, so equal
  # updates and buffers mean equal gradients.
  delta = lambda s: jax.tree.map(lambda new, old: new - old, s.params, state.params)  # noqa: E731
  _close_to_scale(delta(fused), delta(three))
  _close_to_scale(fused.opt_state, three.opt_state)
  _close(fused.batch_stats, three.batch_stats)
  _close(fused.sim_stats, three.sim_stats)
  assert float(m_fused['loss']) == pytest.approx(float(m_fused['ce_loss']) + alpha * float(m_fused['sim_loss']),
                                                 rel=1e-5)
  if alpha == 0:
    # α = 0: exactly the plain cross-entropy step (no pairs in the batch).
    plain, _ = jax.jit(lambda s, b: train.train_step(s, b, alpha=0.0))(state, {k: batch[k] for k in ('image', 'label')})
    _close_to_scale(delta(fused), delta(plain))
    _close(fused.batch_stats, plain.batch_stats)
    _close(fused.sim_stats, state.sim_stats)
