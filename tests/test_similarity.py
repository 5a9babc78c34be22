"""The similarity math against NumPy implementations written from docs/method.md §1-3."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelreg_jax import similarity as S

# ---------------------------------------------------------------- NumPy references (docs/method.md)

def np_pixel_similarity(images):
  x = np.asarray(images, np.float64)
  if x.ndim == 4:
    x = x.mean(-1)
  x = x.reshape(len(x), -1)
  x = x - x.mean(0)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  return x @ x.T


def np_threshold(s, th):
  out = np.zeros_like(s)
  out[s > th] = 1
  out[s < -th] = -1
  return out


def np_loss(x, y, eps=1e-5):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return np.mean((np.log(1 + x + eps) - np.log(1 - x + eps) - np.log(1 + y + eps) + np.log(1 - y + eps)) ** 2)


# ---------------------------------------------------------------- targets

@pytest.mark.parametrize('shape', [(12, 8, 8), (9, 6, 5, 3)])
def test_pixel_similarity_matches_numpy(shape):
  images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
  got = np.asarray(S.pixel_similarity(images))
  np.testing.assert_allclose(got, np_pixel_similarity(images), atol=2e-6)
  np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)
  np.testing.assert_allclose(got, got.T, atol=1e-7)


def test_pixel_similarity_hand_made():
  # Three 1×2 "images": after centring over the 3 images, a=(1,0)-m, b=(0,1)-m, c=(1,1)-m with m=(2/3,2/3).
  images = np.array([[[1., 0.]], [[0., 1.]], [[1., 1.]]])
  a, b, c = np.array([1 / 3, -2 / 3]), np.array([-2 / 3, 1 / 3]), np.array([1 / 3, 1 / 3])
  cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
  expected = np.array([[1, cos(a, b), cos(a, c)], [cos(b, a), 1, cos(b, c)], [cos(c, a), cos(c, b), 1]])
  np.testing.assert_allclose(np.asarray(S.pixel_similarity(images)), expected, atol=1e-6)
  assert expected[0, 1] == pytest.approx(-0.8)   # (−2/9 −2/9) / (5/9)
  assert expected[0, 2] == pytest.approx(-1 / np.sqrt(10))


def test_pixel_similarity_is_invariant_to_scale_and_offset_and_uses_channel_mean():
  rng = np.random.default_rng(1)
  gray = rng.uniform(size=(10, 7, 7))
  rgb = np.stack([gray, gray + 0.3, gray - 0.3], -1)   # channel mean = gray
  np.testing.assert_allclose(S.pixel_similarity(rgb), S.pixel_similarity(gray), atol=1e-5)
  np.testing.assert_allclose(S.pixel_similarity(5 * (gray - 0.5)), S.pixel_similarity(gray), atol=1e-5)


@pytest.mark.parametrize('th', [0.2, 0.4, 0.8])
def test_threshold_targets_matches_numpy(th):
  s = np.random.default_rng(2).uniform(-1, 1, (40, 40)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(S.threshold_targets(s, th)), np_threshold(s, th))


def test_threshold_boundaries_and_raw_variant():
  s = np.array([-0.5, -0.2, -0.1, 0.0, 0.2, 0.21, 1.0], np.float32)
  np.testing.assert_array_equal(np.asarray(S.threshold_targets(s, 0.2)), [-1, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(S.threshold_targets(s, None)), s)
  np.testing.assert_array_equal(np.asarray(S.threshold_targets(s, 0)), s)


# ---------------------------------------------------------------- loss

def test_similarity_loss_matches_numpy_and_arctanh_form():
  rng = np.random.default_rng(3)
  x, y = rng.uniform(-0.95, 0.95, 64), rng.uniform(-0.95, 0.95, 64)
  got = float(S.similarity_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
  assert got == pytest.approx(np_loss(x, y), rel=1e-5)
  # Without ε the release's form is exactly 4·(arctanh x − arctanh y)².
  arct = np.mean(4 * (np.arctanh(x) - np.arctanh(y)) ** 2)
  assert float(S.similarity_loss(jnp.asarray(x), jnp.asarray(y), eps=0.0)) == pytest.approx(arct, rel=1e-4)


@pytest.mark.parametrize('th', [0.0, 0.999])
def test_loss_and_gradient_finite_at_extremes(th):
  with jax.debug_nans(True):
    s_pixel = jnp.array([-1.0, -0.9995, -0.3, 0.0, 0.5, 0.9995, 1.0])
    target = S.threshold_targets(s_pixel, th)
    for x in (jnp.full(7, 1.0), jnp.full(7, -1.0), s_pixel):
      val, grad = jax.value_and_grad(S.similarity_loss)(x, target)
      assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
      assert float(val) == pytest.approx(np_loss(np.asarray(x), np.asarray(target)), rel=1e-4)


def test_loss_gradient_matches_finite_differences():
  x = jnp.array([0.3, -0.5, 0.9], jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  y = jnp.array([1.0, 0.0, -1.0])
  g = np.asarray(jax.grad(S.similarity_loss)(x, y))
  h = 1e-3
  for k in range(3):
    e = np.zeros(3)
    e[k] = h
    fd = (np_loss(np.asarray(x) + e, y) - np_loss(np.asarray(x) - e, y)) / (2 * h)
    assert g[k] == pytest.approx(fd, rel=2e-3)


# ---------------------------------------------------------------- model similarity

def test_running_mean_cosine_and_layer_softmax_match_numpy():
  rng = np.random.default_rng(4)
  shapes = [(5, 8, 8, 3), (5, 4, 4, 6)]
  taps_a = [rng.normal(size=s).astype(np.float32) for s in shapes]
  taps_b = [rng.normal(size=s).astype(np.float32) + 0.5 for s in shapes]
  running = [rng.normal(size=s[-1]).astype(np.float32) for s in shapes]
  w = np.array([0.3, -1.2], np.float32)
  beta = 0.9

  # NumPy: update first (batch mean over both batches and all positions), then centre and compare.
  new_means, cos = [], []
  for a, b, r in zip(taps_a, taps_b, running):
    m = beta * r + (1 - beta) * np.concatenate([a, b]).mean(axis=(0, 1, 2))
    new_means.append(m)
    ua, ub = (a - m).reshape(len(a), -1), (b - m).reshape(len(b), -1)
    cos.append(np.sum(ua * ub, 1) / np.linalg.norm(ua, axis=1) / np.linalg.norm(ub, axis=1))
  cos = np.stack(cos, 1)
  softmax = np.exp(w) / np.exp(w).sum()

  got_means = [S.update_running_mean(jnp.asarray(r), jnp.asarray(a), jnp.asarray(b), beta)
               for a, b, r in zip(taps_a, taps_b, running)]
  for g, e in zip(got_means, new_means):
    np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-6)
  got_cos = S.tap_similarities(taps_a, taps_b, got_means)
  np.testing.assert_allclose(np.asarray(got_cos), cos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(S.combine_layers(got_cos, jnp.asarray(w))), cos @ softmax, rtol=1e-5, atol=1e-6)


def test_running_mean_has_no_gradient():
  a = jnp.ones((2, 3, 3, 4))
  g = jax.grad(lambda x: S.update_running_mean(jnp.zeros(4), x, x, 0.9).sum())(a)
  assert np.all(np.asarray(g) == 0)


def test_cosine_similarity_of_identical_and_opposite():
  a = np.random.default_rng(5).normal(size=(3, 4, 4, 2)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(S.cosine_similarity(a, a)), 1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(S.cosine_similarity(a, -a)), -1, atol=1e-6)


# ---------------------------------------------------------------- the pair sampler

def _stream(key, n, p, steps):
  rows, cols = jax.vmap(lambda s: S.pair_indices(key, s, p, n))(jnp.arange(steps))
  return np.asarray(rows).ravel(), np.asarray(cols).ravel()


@pytest.mark.parametrize('n,p', [(2, 1), (3, 2), (7, 4), (40, 16)])
def test_each_pass_visits_every_pair_once_then_reshuffles(n, p):
  m = S.num_pairs(n)
  rows, cols = _stream(jax.random.PRNGKey(0), n, p, (3 * m + p - 1) // p)
  all_pairs = set(itertools.combinations(range(n), 2))
  passes = [list(zip(rows[k * m:(k + 1) * m], cols[k * m:(k + 1) * m])) for k in range(3)]
  for pairs in passes:
    assert len(pairs) == m and set(pairs) == all_pairs
  if m > 20:
    assert passes[0] != passes[1] != passes[2]


def test_pair_stream_is_deterministic_and_depends_on_key():
  a = _stream(jax.random.PRNGKey(1), 100, 16, 5)
  b = _stream(jax.random.PRNGKey(1), 100, 16, 5)
  c = _stream(jax.random.PRNGKey(2), 100, 16, 5)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  # Step s of a stream equals what a resumed run computes for s alone.
  r, c1 = S.pair_indices(jax.random.PRNGKey(1), 3, 16, 100)
  np.testing.assert_array_equal(np.asarray(r), a[0][48:64])


def test_unrank_matches_enumeration_and_large_n():
  pairs = [(i, j) for j in range(60) for i in range(j)]   # (0,1), (0,2), (1,2), (0,3), …
  i, j = S.unrank_pair(jnp.arange(len(pairs)), 60)
  assert list(zip(np.asarray(i), np.asarray(j))) == pairs
  n = 65535
  ks = np.array([0, 1, 2, S.num_pairs(n) - 1, S.num_pairs(50000) + 7], np.int64)
  i, j = S.unrank_pair(jnp.asarray(ks, jnp.uint32), n)
  for k, a, b in zip(ks.tolist(), np.asarray(i).tolist(), np.asarray(j).tolist()):
    assert 0 <= a < b < n and b * (b - 1) // 2 + a == k


def test_pairs_uniform_over_images():
  rows, cols = _stream(jax.random.PRNGKey(3), 30, 16, 200)
  counts = np.bincount(np.concatenate([rows, cols]), minlength=30)
  # 6400 endpoints over 30 images: expected 213 each; a fair sampler stays well within ±35 %.
  assert counts.min() > 140 and counts.max() < 290
