"""The Boundary attack against analytic cases (METHOD.md §8)."""
import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax import attacks as A


def _images(b=16, s=16, c=1, seed=0):
  """Mid-gray images with one black and one white pixel each: range exactly [0, 1]."""
  x = np.full((b, s, s, c), 0.5, np.float32)
  x += np.random.default_rng(seed).uniform(-0.05, 0.05, x.shape).astype(np.float32)
  x[:, 0, 0, :] = 0.0
  x[:, -1, -1, :] = 1.0
  return jnp.asarray(x)


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
