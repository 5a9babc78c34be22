"""The ResNet against the architecture of docs/method.md §4 and the similarity path against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax import models


def expected_param_count(blocks, width, in_ch=1, classes=10):
  """Counted by hand from docs/method.md §4: convs without bias, BN scale+bias, head, 5 layer weights."""
  n = 7 * 7 * in_ch * width + 2 * width
  cin = width
  for i, nb in enumerate(blocks):
    cout = width * 2**i
    for j in range(nb):
      stride = (1 if i == 0 else 2) if j == 0 else 1
      n += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
      if stride != 1 or cin != cout:
        n += cin * cout + 2 * cout
      cin = cout
  return n + cin * classes + classes + len(blocks) + 1


@pytest.mark.parametrize('name,blocks', [('resnet18', (2, 2, 2, 2)), ('resnet34', (3, 4, 6, 3))])
def test_architecture_shapes_and_parameter_count(name, blocks):
  m = models.create_model(name, 10, width=8)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False)
  n = sum(x.size for x in jax.tree.leaves(v['params']))
  assert n == expected_param_count(blocks, 8)
  logits, taps = m.apply(v, jnp.zeros((3, 32, 32, 1)), train=False)
  assert logits.shape == (3, 10)
  assert [t.shape for t in taps] == [(3, 32, 32, 8), (3, 32, 32, 8), (3, 16, 16, 16), (3, 8, 8, 32), (3, 4, 4, 64)]
  assert v['params']['layer_weights'].shape == (5,)
  assert [v['sim_stats'][f'running_mean_{t}'].shape for t in range(5)] == [(8,), (8,), (16,), (32,), (64,)]
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(v['sim_stats']))
  # Paper width: 11.17 M parameters for ResNet18 with a 1-channel 7×7 stem.
  if name == 'resnet18':
    full = models.create_model(name, 10, width=64)
    shapes = jax.eval_shape(lambda: full.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes['params'])) == expected_param_count(blocks, 64)


def test_unknown_model_name():
  with pytest.raises(ValueError, match='unknown model'):
    models.create_model('resnet50', 10)


def test_init_matches_pytorch_default_bounds():
  m = models.create_model('resnet18', 10, width=8)
  p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False)['params']
  stem = np.asarray(p['stem_conv']['kernel'])          # fan_in = 7·7·1
  assert np.abs(stem).max() <= 1 / 7 + 1e-6 and np.abs(stem).max() > 0.9 / 7
  head_b = np.asarray(p['head']['bias'])               # fan_in = 64
  assert np.abs(head_b).max() <= 1 / 8 + 1e-6


def test_similarity_method_matches_numpy_on_its_own_taps():
  m = models.create_model('resnet18', 10, width=4, beta=0.9)
  rng = np.random.default_rng(0)
  xa = jnp.asarray(rng.normal(size=(6, 32, 32, 1)), jnp.float32)
  xb = jnp.asarray(rng.normal(size=(6, 32, 32, 1)), jnp.float32)
  v = m.init(jax.random.PRNGKey(1), xa[:1], train=False)
  v = {**v, 'params': {**v['params'], 'layer_weights': jnp.array([0.5, -0.3, 0.0, 1.0, 0.2])},
       'sim_stats': {k: jnp.full_like(x, 0.1) for k, x in v['sim_stats'].items()}}
  # Taps from two plain train-mode forward passes (the second sees the first's BN update).
  (_, taps_a), st = m.apply(v, xa, train=True, mutable=['batch_stats'])
  (_, taps_b), _ = m.apply({**v, **st}, xb, train=True, mutable=['batch_stats'])
  (sim, cos), new = m.apply(v, xa, xb, train=True, method=models.ResNet.similarity,
                            mutable=['batch_stats', 'sim_stats'])
  w = np.array([0.5, -0.3, 0.0, 1.0, 0.2])
  exp_cos = []
  for t, (a, b) in enumerate(zip(taps_a, taps_b)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean = 0.9 * 0.1 + 0.1 * np.concatenate([a, b]).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(new['sim_stats'][f'running_mean_{t}']), mean, rtol=1e-4, atol=1e-5)
    ua, ub = (a - mean).reshape(6, -1), (b - mean).reshape(6, -1)
    exp_cos.append((ua * ub).sum(1) / np.linalg.norm(ua, axis=1) / np.linalg.norm(ub, axis=1))
  exp_cos = np.stack(exp_cos, 1)
  np.testing.assert_allclose(np.asarray(cos), exp_cos, atol=2e-4)
  np.testing.assert_allclose(np.asarray(sim), exp_cos @ (np.exp(w) / np.exp(w).sum()), atol=2e-4)
  # BatchNorm running statistics were updated twice (row pass, then column pass).
  assert not np.allclose(np.asarray(new['batch_stats']['stem_bn']['mean']),
                         np.asarray(st['batch_stats']['stem_bn']['mean']))


def test_similarity_without_update_leaves_running_means():
  m = models.create_model('resnet18', 10, width=4)
  x = jnp.ones((2, 32, 32, 1))
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  _, new = m.apply(v, x, -x, train=False, update_stats=False, method=models.ResNet.similarity,
                   mutable=['sim_stats'])
  for a, b in zip(jax.tree.leaves(new['sim_stats']), jax.tree.leaves(v['sim_stats'])):
    np.testing.assert_array_equal(a, b)
