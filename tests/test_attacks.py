"""Attacks against their definitions (docs/method.md §7-8), with NumPy and analytic references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax import attacks as A


def _images(b=16, s=16, c=1, seed=0):
  """Mid-gray images with one black and one white pixel each: range exactly [0, 1]."""
  x = np.full((b, s, s, c), 0.5, np.float32)
  x += np.random.default_rng(seed).uniform(-0.05, 0.05, x.shape).astype(np.float32)
  x[:, 0, 0, :] = 0.0
  x[:, -1, -1, :] = 1.0
  return jnp.asarray(x)


def test_levels_follow_the_protocol_table():
  np.testing.assert_allclose(A.attack_levels('mnist', 'gaussian'), np.linspace(0, 0.5, 10), rtol=1e-6)
  np.testing.assert_allclose(A.attack_levels('cifar10', 'fgsm'), np.linspace(0, 0.02, 10), rtol=1e-6)
  np.testing.assert_allclose(A.attack_levels('cifar100', 'fgsm'), np.linspace(0, 0.005, 10), rtol=1e-6)
  assert A.attack_levels('fashion_mnist', 'salt_pepper')[-1] == pytest.approx(0.3)
  assert A.attack_levels('cifar100', 'salt_pepper')[-1] == pytest.approx(0.1)


def test_gaussian_noise_statistics_and_clipping():
  x = _images(64, 16)
  y = A.gaussian_noise(jax.random.PRNGKey(0), x, 0.05)
  d = np.asarray(y - x)[:, 2:-2, 2:-2]      # away from the clipped extreme pixels
  assert abs(d.mean()) < 0.002 and d.std() == pytest.approx(0.05, rel=0.03)
  big = np.asarray(A.gaussian_noise(jax.random.PRNGKey(1), x, 3.0))
  assert big.min() >= 0.0 and big.max() <= 1.0 and np.mean((big == 0) | (big == 1)) > 0.8


def test_uniform_noise_statistics():
  x = _images(64, 16)
  d = np.asarray(A.uniform_noise(jax.random.PRNGKey(0), x, 0.1) - x)[:, 2:-2, 2:-2]
  assert np.abs(d).max() <= 0.1 + 1e-6
  assert d.std() == pytest.approx(0.1 / np.sqrt(3), rel=0.03) and abs(d.mean()) < 0.002


def test_salt_and_pepper_flip_fraction():
  x = _images(64, 16, c=3)
  y = np.asarray(A.salt_and_pepper(jax.random.PRNGKey(0), x, 0.2))
  changed = y != np.asarray(x)
  assert changed.mean() == pytest.approx(0.2, abs=0.01)
  flipped = y[changed]
  assert set(np.unique(flipped)) <= {0.0, 1.0}
  # Channels are hit independently (the release draws per element): P(all 3 hit) = p³.
  assert np.mean(changed.all(-1)) == pytest.approx(0.2 ** 3, abs=0.003)
  assert (flipped == 1.0).mean() == pytest.approx(0.5, abs=0.02)
  np.testing.assert_array_equal(np.asarray(A.salt_and_pepper(jax.random.PRNGKey(0), x, 0.0)), np.asarray(x))


def test_per_image_range_clipping():
  x = np.asarray(_images(4, 8)) * np.array([1.0, 0.5, 0.2, 0.8])[:, None, None, None]
  x = jnp.asarray(x, jnp.float32)
  for fn in (A.gaussian_noise, A.uniform_noise, A.salt_and_pepper):
    y = np.asarray(fn(jax.random.PRNGKey(3), x, 0.5))
    assert np.all(y.min(axis=(1, 2, 3)) >= np.asarray(x).min(axis=(1, 2, 3)) - 1e-7)
    assert np.all(y.max(axis=(1, 2, 3)) <= np.asarray(x).max(axis=(1, 2, 3)) + 1e-7)


def _linear_logits(w, b):
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def test_fgsm_equals_numpy_sign_gradient_step_of_a_linear_source():
  rng = np.random.default_rng(0)
  xn = np.asarray(_images(8, 6), np.float64).reshape(8, -1)
  w, b = rng.normal(size=(36, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  eps = 0.1
  xn[:4] *= 0.5                                   # images 0-3 in [0, 0.5], 4-7 in [0, 1]
  x = jnp.asarray(xn.reshape(8, 6, 6, 1), jnp.float32)
  # NumPy: ∇ₓ CE = W (softmax − onehot) for logits = xW + b.
  z = xn @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(3)[labels]) @ w.T
  # The release scales and clamps with min/max of the whole loader batch (here: batches of 4).
  lo = np.repeat([xn[:4].min(), xn[4:].min()], 4)[:, None]
  hi = np.repeat([xn[:4].max(), xn[4:].max()], 4)[:, None]
  expected = np.clip(xn + (hi - lo) * eps * np.sign(grad), lo, hi)
  sign = A.gradient_sign(_linear_logits(jnp.asarray(w), jnp.asarray(b)), x, jnp.asarray(labels))
  blo, bhi = A.batch_range(np.asarray(x), group=4)
  np.testing.assert_array_equal(blo.ravel(), lo.ravel().astype(np.float32))
  got = A.fgsm(None, x, eps, A.FgsmAux(sign, jnp.asarray(blo), jnp.asarray(bhi)))
  np.testing.assert_allclose(np.asarray(got).reshape(8, -1), expected, atol=1e-6)


def test_batch_range_follows_the_test_loader_batches():
  x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
  lo, hi = A.batch_range(x, group=4, offset=2)    # test images 2..11: batches [2,3], [4..7], [8..11]
  np.testing.assert_array_equal(lo.ravel(), [0, 0, 2, 2, 2, 2, 6, 6, 6, 6])
  np.testing.assert_array_equal(hi.ravel(), [1, 1, 5, 5, 5, 5, 9, 9, 9, 9])


def test_level_zero_reproduces_clean_accuracy():
  rng = np.random.default_rng(1)
  x = _images(32, 6)
  w = jnp.asarray(rng.normal(size=(36, 4)), jnp.float32)
  fn = _linear_logits(w, jnp.zeros(4))
  labels = jnp.asarray(rng.integers(0, 4, 32))
  clean = float(jnp.sum(jnp.argmax(fn(x), -1) == labels))
  lo, hi = A.batch_range(np.asarray(x))
  aux = A.FgsmAux(A.gradient_sign(fn, x, labels), jnp.asarray(lo), jnp.asarray(hi))
  for attack in A.LEVEL_ATTACKS.values():
    got = A.correct_per_level(fn, attack, jax.random.PRNGKey(0), x, labels, jnp.array([0.0, 0.3]), aux)
    assert float(got[0]) == clean
