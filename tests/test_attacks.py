"""Attacks against their definitions (METHOD.md §7-8), with NumPy and analytic references."""
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
  changed = np.any(y != np.asarray(x), axis=-1)
  assert changed.mean() == pytest.approx(0.2, abs=0.01)
  flipped = y[changed]
  assert set(np.unique(flipped)) <= {0.0, 1.0}
  # All channels of a pixel flip together; salt and pepper equally likely.
  assert np.all(flipped.min(-1) == flipped.max(-1))
  assert (flipped[:, 0] == 1.0).mean() == pytest.approx(0.5, abs=0.03)
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
  x = _images(8, 6)
  xn = np.asarray(x, np.float64).reshape(8, -1)
  w, b = rng.normal(size=(36, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  # NumPy: ∇ₓ CE = W (softmax − onehot) for logits = xW + b.
  z = xn @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(3)[labels]) @ w.T
  eps = 0.1
  expected = np.clip(xn + (xn.max(1, keepdims=True) - xn.min(1, keepdims=True)) * eps * np.sign(grad),
                     xn.min(1, keepdims=True), xn.max(1, keepdims=True))
  sign = A.gradient_sign(_linear_logits(jnp.asarray(w), jnp.asarray(b)), x, jnp.asarray(labels))
  got = A.fgsm(None, x, eps, sign)
  np.testing.assert_allclose(np.asarray(got).reshape(8, -1), expected, atol=1e-6)


def test_level_zero_reproduces_clean_accuracy():
  rng = np.random.default_rng(1)
  x = _images(32, 6)
  w = jnp.asarray(rng.normal(size=(36, 4)), jnp.float32)
  fn = _linear_logits(w, jnp.zeros(4))
  labels = jnp.asarray(rng.integers(0, 4, 32))
  clean = float(jnp.sum(jnp.argmax(fn(x), -1) == labels))
  aux = A.gradient_sign(fn, x, labels)
  for attack in A.LEVEL_ATTACKS.values():
    got = A.correct_per_level(fn, attack, jax.random.PRNGKey(0), x, labels, jnp.array([0.0, 0.3]), aux)
    assert float(got[0]) == clean


def test_boundary_attack_on_a_linear_classifier_approaches_the_analytic_distance():
  rng = np.random.default_rng(2)
  b, s = 12, 8
  d = s * s
  w = rng.normal(size=d).astype(np.float32)
  x = rng.uniform(0.3, 0.7, (b, d)).astype(np.float32)
  x[:, 0], x[:, 1] = 0.0, 1.0                     # range [0, 1] for every image
  w[:2] = 0.0                                     # the range pixels do not matter
  margin = rng.uniform(0.05, 0.3, b) * np.linalg.norm(w) * rng.choice([-1, 1], b)
  bias = margin - x @ w                           # w·x + bias = margin: distance |margin|/‖w‖
  x = jnp.asarray(x.reshape(b, s, s, 1))
  wj = jnp.asarray(w)

  def predict_batch(z, bias_per_image):
    return (z.reshape(z.shape[0], -1) @ wj + bias_per_image > 0).astype(jnp.int32)

  # The classifier's bias is per image: tile it for the candidate batches the attack sends.
  bias_j = jnp.asarray(bias, jnp.float32)
  predict = lambda z: predict_batch(z, jnp.tile(bias_j, z.shape[0] // b))  # noqa: E731
  labels = predict(x)
  cfg = A.BoundaryConfig(steps=400, candidates=10)
  out = jax.jit(lambda k: A.boundary_attack(predict, k, x, labels, cfg))(jax.random.PRNGKey(0))
  analytic = (np.abs(margin) / np.linalg.norm(w)) ** 2 / d
  got = np.asarray(out['distance'])
  assert np.all(np.asarray(out['success'])) and np.all(np.asarray(out['is_adversarial']))
  assert np.all(got >= analytic * (1 - 1e-3))     # never closer than the true boundary
  assert np.max(got / analytic) < 1.02, got / analytic  # 400 steps: within 2 % (seen: 0.4 %)
  trace = np.asarray(out['distance_trace'])
  assert trace.shape == (401, b)
  assert np.all(np.diff(trace, axis=0) <= 1e-9)   # the distance never grows
  assert np.all(trace[-1] < 0.5 * trace[0])       # and it did shrink


def test_boundary_attack_reports_unfoolable_images_as_infinite():
  x = _images(4, 6)
  predict = lambda z: jnp.zeros(z.shape[0], jnp.int32)  # noqa: E731  (constant: never fooled)
  out = A.boundary_attack(predict, jax.random.PRNGKey(0), x, jnp.zeros(4, jnp.int32), A.BoundaryConfig(steps=3))
  assert not np.any(np.asarray(out['success'])) and np.all(np.isinf(np.asarray(out['distance'])))
