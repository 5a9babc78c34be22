"""White-box PGD against analytic optima of linear models and NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax.attacks import levels as L
from pixelreg_jax.attacks import whitebox as W
from pixelreg_jax.errors import ConfigError

# One compilation per (model, config, shapes); ε, keys and bounds are traced. The attack works with any
# key type; most tests use the 'rbg' generator, which compiles about twice as fast on CPUs as threefry
# (but, unlike threefry, does not give the same streams under vmap and lax.map).


def _key(seed):
  return jax.random.key(seed, impl='rbg')



pgd = jax.jit(W.pgd, static_argnums=0, static_argnames='cfg')
correct_under_pgd = jax.jit(W.correct_under_pgd, static_argnums=0, static_argnames=('cfg', 'sequential_levels'))


def _binary_model(dual, max_dist, d=64, b=48, seed=0):
  """A 2-class linear model z = [0, w·x + c_i] whose images (in [0.3, 0.7]) lie at known distances.

  Image i has minimal L_p distance dist_i (uniform in (0, max_dist]) to the boundary w·x + c_i = 0:
  |w·x + c_i| = dist_i·‖w‖_q with q the dual norm (‖·‖₁ for L∞, ‖·‖₂ for L2).
  Returns logits_fn, x [b, 8, 8, 1], labels (the clean predictions), dist [b].
  """
  rng = np.random.default_rng(seed)
  w = rng.normal(size=d)
  x = rng.uniform(0.3, 0.7, (b, d))
  dist = rng.uniform(0.02, 1.0, b) * max_dist
  margin = dist * np.linalg.norm(w, ord=dual) * rng.choice([-1, 1], b)
  wj, cj = jnp.asarray(w, jnp.float32), jnp.asarray(margin - x @ w, jnp.float32)

  def logits_fn(z):
    m = z.reshape(z.shape[0], -1) @ wj + cj
    return jnp.stack([jnp.zeros_like(m), m], -1)

  s = int(np.sqrt(d))
  return logits_fn, jnp.asarray(x.reshape(b, s, s, 1), jnp.float32), jnp.asarray(margin > 0, jnp.int32), dist


def _fooled(logits_fn, x_adv, labels):
  return np.asarray(jnp.argmax(logits_fn(x_adv), -1) != labels)


@pytest.mark.parametrize('norm,dual,steps,loss', [('linf', 1, 10, 'ce'), ('l2', 2, 40, 'ce'),
                                                  ('linf', 1, 10, 'margin')])
def test_pgd_flips_exactly_the_images_closer_than_eps_on_a_linear_binary_model(norm, dual, steps, loss):
  max_dist = {'linf': 0.25, 'l2': 0.5}[norm]            # x ± δ stays inside [0, 1]: the box is inactive
  model, x, labels, dist = _binary_model(dual, max_dist)
  cfg = W.PgdConfig(norm, steps=steps, loss=loss)
  eps = np.array([0.3, 0.5, 0.7, 0.9]) * max_dist
  adv = jax.jit(jax.vmap(lambda e, k: W.pgd(model, k, x, labels, e, 0.0, 1.0, cfg)))(
      jnp.asarray(eps, jnp.float32), jax.random.split(_key(0), len(eps)))
  band = 0.01                                            # |dist/ε − 1| < 1 %: either outcome is fine
  for e, a in zip(eps, adv):
    fooled = _fooled(model, a, labels)
    clear = np.abs(dist / e - 1) > band
    np.testing.assert_array_equal(fooled[clear], (dist < e)[clear])
    assert clear.sum() >= len(dist) - 2 and 0 < fooled.sum() < len(dist)


def test_pgd_never_flips_beyond_the_analytic_distance_of_a_linear_multiclass_model():
  """z = xW: no perturbation with ‖δ‖∞ < min_j (z_y − z_j)/‖w_y − w_j‖₁ changes the class; PGD finds the
  images well inside ε (distance < ε/2)."""
  rng = np.random.default_rng(11)
  d, k, b = 64, 4, 64
  w = rng.normal(size=(d, k))
  x = rng.uniform(0.35, 0.65, (b, d))
  z = x @ w
  y = z.argmax(1)
  gap = z[np.arange(b), y][:, None] - z                                     # [b, k] z_y − z_j
  l1 = np.abs(w.T[y][:, None, :] - w.T[None]).sum(-1)                       # [b, k] ‖w_y − w_j‖₁
  own = np.arange(k)[None] == y[:, None]
  dist = np.where(own, np.inf, gap / np.where(own, 1.0, l1)).min(1)
  fn = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w, jnp.float32)  # noqa: E731
  eps = float(np.median(dist))                           # half the images are closer than ε
  assert eps < 0.35                                      # x ± δ stays in [0, 1]: the box is inactive
  adv = pgd(fn, _key(5), jnp.asarray(x.reshape(b, 8, 8, 1), jnp.float32), jnp.asarray(y), eps)
  fooled = _fooled(fn, adv, jnp.asarray(y))
  assert not np.any(fooled & (dist > eps * 1.001))
  assert np.all(fooled[dist < eps / 2]) and (dist < eps / 2).sum() >= 8


def test_perturbation_stays_in_the_ball_and_the_range():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.1, 0.9, (16, 6, 6, 2)), jnp.float32)   # any range; bounds are [0.1, 0.9]
  w1 = jnp.asarray(rng.normal(size=(72, 5)), jnp.float32)
  fn = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w1)  # noqa: E731
  labels = jnp.asarray(rng.integers(0, 5, 16))
  lo = jnp.full((16, 1, 1, 1), 0.1)                      # per-image bounds broadcast as [B, 1, 1, 1]
  for norm, eps in (('linf', 0.2), ('l2', 1.5)):
    adv = np.asarray(pgd(fn, _key(2), x, labels, eps, lo, 0.9, cfg=W.PgdConfig(norm, steps=5)))
    d = (adv - np.asarray(x)).reshape(16, -1)
    assert adv.min() >= 0.1 - 1e-7 and adv.max() <= 0.9 + 1e-7
    if norm == 'linf':
      assert np.abs(d).max() <= eps + 1e-6 and np.abs(d).max() > 0.5 * eps
    else:
      assert np.linalg.norm(d, axis=1).max() <= eps * (1 + 1e-5)


def _mlp(seed=3, d=36, h=16, k=4):
  rng = np.random.default_rng(seed)
  w1 = jnp.asarray(rng.normal(size=(d, h)) / np.sqrt(d) * 4, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(h, k)), jnp.float32)
  return lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w1 - 1.0) @ w2  # noqa: E731


def _mlp_data(fn, b=64, seed=4):
  x = jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (b, 6, 6, 1)), jnp.float32)
  return x, jnp.argmax(fn(x), -1)                        # labels = clean predictions (all correct)


def test_single_step_without_random_start_is_fgsm():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(36, 3))
  x = rng.uniform(0, 1, (12, 36))
  labels = rng.integers(0, 3, 12)
  fn = lambda z: z.reshape(z.shape[0], -1) @ jnp.asarray(w, jnp.float32)  # noqa: E731
  xj = jnp.asarray(x.reshape(12, 6, 6, 1), jnp.float32)
  eps = 0.1
  # NumPy: ∇ₓ CE = W (softmax − onehot) for logits = xW.
  z = x @ w
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  expected = np.clip(x + eps * np.sign((p - np.eye(3)[labels]) @ w.T), 0, 1)
  cfg = W.PgdConfig('linf', steps=1, rel_step_size=1.0, random_start=False)
  got = np.asarray(pgd(fn, _key(0), xj, jnp.asarray(labels), eps, 0.0, 1.0, cfg=cfg)).reshape(12, -1)
  correct = z.argmax(1) == labels                       # misclassified images return x itself
  np.testing.assert_allclose(got[correct], expected[correct], atol=1e-6)
  np.testing.assert_allclose(got[~correct], x[~correct], atol=1e-6)


def test_correct_under_pgd_counts_per_level_is_at_least_fgsm_and_clean_at_eps_zero():
  fn = _mlp()
  x, labels = _mlp_data(fn)
  eps = jnp.asarray(W.pgd_levels('mnist', 'linf'))
  key = jax.random.PRNGKey(1)                           # threefry: the same streams under vmap and lax.map
  real = 40                                              # images 40..63 are padding
  mask = jnp.asarray((np.arange(len(labels)) < real).astype(np.float32))
  acc = np.asarray(correct_under_pgd(fn, key, x, labels, eps, mask=mask))
  seq = np.asarray(correct_under_pgd(fn, key, x, labels, eps, mask=mask, sequential_levels=True))
  np.testing.assert_array_equal(seq, acc)                # lax.map over levels: the same counts
  # The same as one PGD call per level with the level's fold of the key, counting real images.
  for i in (0, 3, 9):
    ok = np.asarray(jnp.argmax(fn(pgd(fn, jax.random.fold_in(key, i), x, labels, eps[i])), -1) == labels)
    assert acc[i] == ok[:real].sum()
  # FGSM with the project's independent gradient sign (levels.gradient_sign), clipped to [0, 1].
  sign = L.gradient_sign(fn, x, labels)
  fgsm = np.array([float(jnp.sum((jnp.argmax(fn(jnp.clip(x + e * sign, 0, 1)), -1) == labels)[:real]))
                   for e in eps])
  assert acc[0] == fgsm[0] == real                       # ε = 0: clean accuracy
  assert np.all(acc <= fgsm) and acc[-1] < fgsm[-1]
  assert np.all(np.diff(acc) <= 0)


def test_restarts_never_raise_accuracy():
  fn = _mlp(seed=6)
  x, labels = _mlp_data(fn, seed=7)
  key = _key(3)

  def fooled(cfg):
    return _fooled(fn, pgd(fn, key, x, labels, 0.08, 0.0, 1.0, cfg=cfg), labels)

  one, five = fooled(W.PgdConfig(steps=1)), fooled(W.PgdConfig(steps=1, restarts=5))
  assert np.all(five[one])                               # restart 0 is shared: a superset is fooled
  assert five.sum() > one.sum() > 0


def test_levels_and_variant_names():
  np.testing.assert_allclose(W.pgd_levels('mnist', 'linf'), np.linspace(0, 0.3, 10), rtol=1e-6)
  cifar = W.pgd_levels('cifar10', 'linf') * 255
  assert np.isclose(cifar, 8).any() and np.isclose(cifar, 16).any()
  assert np.isclose(W.pgd_levels('cifar100', 'l2'), 0.5).any()
  assert W.pgd_levels('fashion_mnist', 'l2')[-1] == pytest.approx(3.0)
  assert set(W.PGD_VARIANTS) >= {'pgd_linf', 'pgd_linf_steps40', 'pgd_linf_steps40_restarts5', 'pgd_l2'}
  cfg = W.PGD_VARIANTS['pgd_linf_steps40_restarts5']
  assert (cfg.steps, cfg.restarts) == (40, 5) and W.PgdConfig.from_settings(cfg.settings()) == cfg
  with pytest.raises(ConfigError):
    W.PgdConfig(norm='l1')
  with pytest.raises(ConfigError):
    W.pgd_levels('svhn', 'linf')
