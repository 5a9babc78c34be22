"""Corruptions against the ``imagecorruptions`` package, the libraries the reference scripts call
(PIL, cv2, scipy, skimage) and hand-computed values.

Tolerance against imagecorruptions: it returns ``np.uint8`` of its float result in [0, 255], i.e.
floor(255·f); so an exact match has 255·ours − ref in [0, 1). We allow [−0.01, 1.01] (float32
against float64). PIL's 8-bit BOX resampling rounds after each of its two passes: ±1 (pixelate).
glass_blur truncates its first blur to 8 bits inside; on flat regions that blur is an exact integer
up to float64 (reference) or float32 (ours) rounding, so the truncation may take the neighbouring
level: one level there moves the output by at most the second blur's weights (< 1.01 more), on
≤ 1 % of the pixels.
Random corruptions are compared with the reference's own NumPy draws replayed (np.random.seed,
the same calls in the same order) where the reference uses np.random, statistically otherwise.
"""
import warnings

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import color, transform
from skimage.filters import gaussian as sk_gaussian

from pixelreg_jax.attacks import corruptions as C
from pixelreg_jax.attacks.corruptions import hendrycks
from pixelreg_jax.errors import ConfigError

ic = pytest.importorskip('imagecorruptions')
import imagecorruptions.corruptions as icc  # noqa: E402


@pytest.fixture(autouse=True)
def _imagecorruptions_on_current_libraries(monkeypatch):
  """imagecorruptions 1.1.2 calls skimage's removed ``multichannel=`` and NumPy's removed ``np.float_``."""
  def gaussian(image, sigma=1, multichannel=None, **kw):
    return sk_gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)
  monkeypatch.setattr(icc, 'gaussian', gaussian)
  monkeypatch.setattr(np, 'float_', np.float64, raising=False)
  warnings.filterwarnings('ignore', category=UserWarning)


def _gray(n=3, s=32, seed=0):
  """uint8 [n, s, s]: a smooth field in [0.2, 0.8], a bright square and a dark line (edges and flats)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    f = ndimage.gaussian_filter(rng.uniform(0, 1, (s, s)), 2)
    f = (f - f.min()) / (f.max() - f.min()) * 0.6 + 0.2
    r0, c0 = rng.integers(3, s - 11, 2)
    f[r0:r0 + 8, c0:c0 + 8] = rng.uniform(0.85, 1.0)
    f[rng.integers(1, s - 1), 2:-2] = 0.05
    out.append(np.round(f * 255).astype(np.uint8))
  return np.stack(out)


def _digits(n=3, s=28, seed=0):
  """float [n, s, s, 1]: digit-like strokes on black (MNIST-like)."""
  rng = np.random.default_rng(seed)
  rr, cc = np.mgrid[0:s, 0:s]
  out = np.zeros((n, s, s))
  for i in range(n):
    r0, c0, rad = s / 2 + rng.uniform(-2, 2), s / 2 + rng.uniform(-2, 2), rng.uniform(6, 9)
    ring = np.clip(1.5 - np.abs(np.hypot(rr - r0, cc - c0) - rad) / 1.5, 0, 1)
    out[i] = np.maximum(ring * (cc < c0 + 3), np.clip(1.5 - np.abs(cc - c0 - 5) / 1.5, 0, 1) * (rr > r0))
  return np.round(out * 255)[..., None].astype(np.float32) / 255


def _unit(u8):
  return jnp.asarray(u8[..., None] / 255.0, jnp.float32)


# Compiled once per call (faster on CPUs than op-by-op for these); the others run op by op.
_JIT = {'motion_blur', 'glass_blur', 'elastic_transform', 'defocus_blur', 'pixelate', 'shear', 'rotate', 'scale',
        'translate', 'spatter', 'zigzag', 'dotted_line'}


def _apply(name, severity, x, draws=None, variant='imagenet_c'):
  """Our corruption on x [B, H, W, C] with given per-image draws (leading axis B)."""
  c, p = C.CORRUPTIONS[name], C.PARAMS[variant][name][severity - 1]
  fn = jax.vmap(lambda xi, d: c.apply(xi, d, p))
  return np.asarray((jax.jit(fn) if name in _JIT else fn)(x, draws))


def _reference(name, severity, img_u8, seed):
  np.random.seed(seed)
  return ic.corrupt(np.stack([img_u8] * 3, -1), severity, name).astype(np.float64)


def _replayed_draws(name, severity, seed, shape=(32, 32, 3)):
  """The reference's np.random draws after np.random.seed(seed), in our draws' format."""
  p = C.PARAMS['imagenet_c'][name][severity - 1]
  np.random.seed(seed)
  if name in ('gaussian_noise', 'speckle_noise'):
    return jnp.asarray(np.random.normal(size=shape)[..., :1], jnp.float32)        # channel 0
  if name == 'motion_blur':
    return jnp.float32(np.random.uniform(-45, 45))
  if name == 'glass_blur':
    hs, _ = hendrycks._glass_positions(shape[0], shape[1], p)
    off = np.stack([np.random.randint(-p['delta'], p['delta'], size=(2,)) for _ in range(len(hs))])
    return jnp.asarray(off, jnp.int32), jnp.ones(len(hs), bool)
  if name == 'elastic_transform':
    m = shape[0] * 0.005
    ux, uy = (np.random.uniform(-m, m, size=shape[:2]) / m for _ in range(2))
    return jnp.zeros((3, 2)), jnp.asarray(ux, jnp.float32), jnp.asarray(uy, jnp.float32)
  if name == 'fog':
    draws, wibble = [], 100.0
    for side in hendrycks._plasma_shapes(hendrycks._fog_size(np.zeros(shape), p)):
      draws.append(tuple(jnp.asarray(np.random.uniform(-wibble, wibble, (side, side)) / wibble, jnp.float32)
                         for _ in range(3)))
      wibble /= p['decay']
    return draws
  return None


def _stack(draws):
  return jax.tree.map(lambda *a: jnp.stack(a), *draws)


@pytest.mark.parametrize('name', ['brightness', 'contrast', 'gaussian_blur', 'defocus_blur', 'zoom_blur', 'pixelate',
                                  'jpeg_compression', 'gaussian_noise', 'speckle_noise', 'motion_blur', 'glass_blur',
                                  'elastic_transform', 'fog'])
def test_matches_imagecorruptions_on_gray_images(name):
  imgs = _gray()
  lo, hi = {'pixelate': (-1.01, 1.01), 'jpeg_compression': (-1e-3, 1e-3), 'glass_blur': (-1.01, 2.01)}.get(
      name, (-0.01, 1.01))
  for s in range(1, 6):
    draws = [_replayed_draws(name, s, seed) for seed in range(len(imgs))]
    ours = _apply(name, s, _unit(imgs), None if draws[0] is None else _stack(draws))[..., 0] * 255
    ref = np.stack([_reference(name, s, img, seed)[..., 0] for seed, img in enumerate(imgs)])
    d = ours - ref
    assert lo <= d.min() and d.max() <= hi, (name, s, d.min(), d.max())
    assert np.mean((d < -0.01) | (d > 1.01)) <= {'pixelate': 1.0, 'glass_blur': 0.01}.get(name, 0.0)
    assert np.abs(ours - imgs).mean() > 0.3                 # the corruption did something


def test_jpeg_matches_pil_at_a_size_that_is_not_a_multiple_of_8():
  img = _gray(1, 28)[0]
  for quality in (80, 40, 7):
    buf = __import__('io').BytesIO()
    Image.fromarray(img, 'L').save(buf, 'JPEG', quality=quality)
    ref = np.asarray(Image.open(buf), np.float64)
    ours = np.asarray(C.jpeg_compression(_unit(img[None])[0], None, {'quality': quality}))[..., 0] * 255
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_brightness_on_color_images_matches_the_hsv_round_trip():
  rgb = np.stack([_gray(1, 32, seed)[0] for seed in (1, 2, 3)], -1)       # a colored image
  for s in (1, 3, 5):
    ref = ic.corrupt(rgb, s, 'brightness').astype(np.float64)
    ours = _apply('brightness', s, jnp.asarray(rgb[None] / 255.0, jnp.float32))[0] * 255
    assert -0.01 <= (ours - ref).min() and (ours - ref).max() <= 1.01
  hsv = color.rgb2hsv(rgb / 255.0)
  hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
  np.testing.assert_allclose(_apply('brightness', 3, jnp.asarray(rgb[None] / 255.0, jnp.float32))[0],
                             color.hsv2rgb(hsv), atol=1e-5)


def test_shot_and_impulse_noise_statistics():
  x = jnp.full((16, 32, 32, 1), 128 / 255, jnp.float32)
  key = jax.random.PRNGKey(0)
  ref_img = np.full((32, 32, 3), 128, np.uint8)
  # Shot noise, c = 60 (severity 1): Poisson(c·x)/c has mean x and variance x/c.
  ours = np.asarray(C.corrupt(key, x, 'shot_noise', 1))
  assert ours.mean() == pytest.approx(128 / 255, abs=4 * np.sqrt(128 / 255 / 60 / ours.size))
  assert ours.var() == pytest.approx(128 / 255 / 60, rel=0.05)
  # Against imagecorruptions (both floored to 8 bits as it returns them), severity 4 (c = 5).
  ours = np.floor(np.asarray(C.corrupt(key, x, 'shot_noise', 4)) * 255)
  ref = np.stack([ic.corrupt(ref_img, 4, 'shot_noise') for _ in range(6)]).astype(np.float64)
  se = np.sqrt(ours.var() / ours.size + ref.var() / ref.size)
  assert abs(ours.mean() - ref.mean()) < 4 * se and ours.std() == pytest.approx(ref.std(), rel=0.05)
  np.testing.assert_array_equal(np.unique(ours), np.unique(ref))      # the same support k·255/5
  # Impulse noise: elements set to 0 or 1 with probability c, salt and pepper equally likely.
  for s in (1, 5):
    c = C.PARAMS['imagenet_c']['impulse_noise'][s - 1]['c']
    ours = np.asarray(C.corrupt(key, x, 'impulse_noise', s))
    hit = (ours == 0) | (ours == 1)
    assert hit.mean() == pytest.approx(c, abs=4 * np.sqrt(c * (1 - c) / hit.size))
    assert (ours[hit] == 1).mean() == pytest.approx(0.5, abs=4 * np.sqrt(0.25 / hit.sum()))
    assert np.all(ours[~hit] == np.float32(128 / 255))
    ref = np.stack([ic.corrupt(ref_img, s, 'impulse_noise') for _ in range(6)])
    ref_hit = ((ref == 0) | (ref == 255)).mean()
    assert abs(hit.mean() - ref_hit) < 4 * np.sqrt(c * (1 - c) * (1 / hit.size + 1 / ref.size))


def _zoom_reference(img, factors, crop):
  """The scripts' clipped_zoom with scipy.ndimage.zoom (order 1), averaged with the image."""
  h = img.shape[0]
  out = np.zeros_like(img)
  for z in factors:
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z), order=1)
    trim = (zoomed.shape[0] - h) // 2 if crop == 'center' else 0
    out += zoomed[trim:trim + h, trim:trim + h]
  return np.clip((img + out) / (len(factors) + 1), 0, 1)


def test_centred_zoom_blur_and_box_pixelate_of_the_cifar_and_mnist_scripts():
  for variant, s in (('cifar10_c', 32), ('mnist_c', 28)):
    x = _unit(_gray(2, s))
    for sev in (1, 5):
      p = C.PARAMS[variant]['zoom_blur'][sev - 1]
      ours = _apply('zoom_blur', sev, x, variant=variant)
      for i in range(2):
        ref = _zoom_reference(np.asarray(x[i, ..., 0], np.float64), np.arange(*p['zooms']), 'center')
        np.testing.assert_allclose(ours[i, ..., 0], ref, atol=1e-5)
      # Pixelate with PIL BOX down and BOX up, on float ('F') images: no 8-bit rounding.
      c = C.PARAMS[variant]['pixelate'][sev - 1]['c']
      ours = _apply('pixelate', sev, x, variant=variant)
      for i in range(2):
        im = Image.fromarray(np.asarray(x[i, ..., 0]), 'F').resize((int(s * c),) * 2, Image.BOX)
        np.testing.assert_allclose(ours[i, ..., 0], np.asarray(im.resize((s, s), Image.BOX)), atol=1e-5)


def test_affine_warp_matches_cv2_warp_affine():
  img = _unit(_gray(1, 32))[0]
  rng = np.random.default_rng(0)
  for border, mode in ((cv2.BORDER_REFLECT_101, 'reflect101'), (cv2.BORDER_CONSTANT, 'grid-constant')):
    m = np.array([[1.02, 0.05, 1.3], [-0.04, 0.97, -0.8]]) + rng.normal(0, 0.03, (2, 3))
    ref = cv2.warpAffine(np.asarray(img[..., 0]), m, (32, 32), borderMode=border)
    ours = np.asarray(C.affine_warp(img, jnp.asarray(cv2.invertAffineTransform(m), jnp.float32), mode))[..., 0]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize('variant,border,map_mode', [('cifar10_c', cv2.BORDER_REFLECT_101, 'reflect'),
                                                     ('mnist_c', cv2.BORDER_CONSTANT, 'constant')])
def test_elastic_transform_follows_the_script_recipe(variant, border, map_mode):
  """cv2.getAffineTransform/warpAffine, skimage gaussian, scipy map_coordinates as the scripts call them."""
  s = 32 if variant == 'cifar10_c' else 28
  x = _unit(_gray(2, s)) if s == 32 else jnp.asarray(_digits(2))
  for sev in (2, 4):
    p = C.PARAMS[variant]['elastic_transform'][sev - 1]
    alpha, sigma, f = p['alpha'] * s, p['sigma'] * s, p['affine'] * s
    for i in range(2):
      np.random.seed(i)
      cs, ss = np.float32((s, s)) // 2, s // 3
      pts1 = np.float32([cs + ss, [cs[0] + ss, cs[1] - ss], cs - ss])
      noise = np.random.uniform(-f, f, size=pts1.shape).astype(np.float32)
      ux, uy = np.random.uniform(-1, 1, size=(s, s)), np.random.uniform(-1, 1, size=(s, s))
      img = cv2.warpAffine(np.asarray(x[i, ..., 0]), cv2.getAffineTransform(pts1, pts1 + noise), (s, s),
                           borderMode=border)
      dx = (sk_gaussian(ux, sigma, mode='reflect', truncate=3) * alpha).astype(np.float32)
      dy = (sk_gaussian(uy, sigma, mode='reflect', truncate=3) * alpha).astype(np.float32)
      cols, rows = np.meshgrid(np.arange(s), np.arange(s))
      ref = np.clip(ndimage.map_coordinates(img, [rows + dy, cols + dx], order=1, mode=map_mode), 0, 1)
      draws = (jnp.asarray(noise / f), jnp.asarray(ux, jnp.float32), jnp.asarray(uy, jnp.float32))
      ours = np.asarray(C.elastic_transform(x[i], draws, p))[..., 0]
      np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_mnist_c_glass_blur_swaps_with_a_coin():
  """MNIST-C on 2-D arrays: a real swap, each visited pixel only if its coin says so."""
  x = jnp.asarray(_digits(1))[0]
  p = C.PARAMS['mnist_c']['glass_blur'][1]                  # σ 0.9, δ 2, 1 iteration
  rng = np.random.default_rng(0)
  hs, ws = hendrycks._glass_positions(28, 28, p)
  off = rng.integers(-p['delta'], p['delta'], (len(hs), 2))
  coin = rng.random(len(hs)) < 0.5
  ref = np.uint8(sk_gaussian(np.asarray(x[..., 0], np.float64), sigma=p['sigma']) * 255)
  for (h, w), (dx, dy), c in zip(zip(hs, ws), off, coin):
    if c:
      ref[h, w], ref[h + dy, w + dx] = ref[h + dy, w + dx], ref[h, w]
  ref = np.clip(sk_gaussian(ref / 255.0, sigma=p['sigma']), 0, 1)
  ours = np.asarray(C.glass_blur(x, (jnp.asarray(off), jnp.asarray(coin)), p))[..., 0]
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def _warp_reference(img, a, translation=None):
  """skimage warp with the inverse map [[a, t], [0, 1]]; t keeps the centre ((W−1)/2, (H−1)/2) fixed."""
  c = (np.array(img.shape[1::-1]) - 1) / 2
  t = c - a @ c if translation is None else translation
  m = np.eye(3)
  m[:2, :2], m[:2, 2] = a, t
  return np.clip(transform.warp(img, transform.ProjectiveTransform(matrix=m), order=1), 0, 1)


def test_mnist_c_affine_corruptions_match_skimage_warp():
  x = jnp.asarray(_digits(1))
  img = np.asarray(x[0, ..., 0], np.float64)
  for sev in (1, 4):
    c = C.PARAMS['mnist_c']['shear'][sev - 1]['c']
    for sign in (1.0, -1.0):
      s = sign * c
      signs = jnp.asarray([[sign, 1.0]])
      ours = _apply('shear', sev, x, signs, 'mnist_c')[0, ..., 0]    # the 2019 skimage shear matrix
      np.testing.assert_allclose(ours, _warp_reference(img, np.array([[1, -np.sin(s)], [0, np.cos(s)]])), atol=1e-5)
      ours = _apply('rotate', sev, x, signs, 'mnist_c')[0, ..., 0]
      rot = np.array([[np.cos(s), -np.sin(s)], [np.sin(s), np.cos(s)]])
      np.testing.assert_allclose(ours, _warp_reference(img, rot), atol=1e-5)
    ours = _apply('scale', sev, x, variant='mnist_c')[0, ..., 0]
    k = C.PARAMS['mnist_c']['scale'][sev - 1]['c']
    np.testing.assert_allclose(ours, _warp_reference(img, np.eye(2) * k), atol=1e-5)
    assert k == pytest.approx(1 / (1 - 0.1 * sev))                  # MNIST-C: scale = 1/0.9 … 1/0.5
    ours = _apply('translate', sev, x, jnp.asarray([[1.0, -1.0]]), 'mnist_c')[0, ..., 0]
    np.testing.assert_allclose(ours, _warp_reference(img, np.eye(2), np.array([sev, -sev])), atol=1e-6)


def _line(s, c0, r0, c1, r1):
  """MNIST-C's line_from_points on an s×s grid (NumPy)."""
  cc, rr = np.meshgrid(np.arange(s, dtype=float), np.arange(s, dtype=float))
  if c1 == c0:
    return np.zeros((s, s))
  f = (r1 - r0) / (c1 - c0) * (cc - c0) + r0
  d = np.clip(np.abs(rr - f), 0, 2.3 - 1e-10)
  v = np.clip(np.log(1 - d / 2.3) + 1, 0, 1)
  v[:, :int(np.floor(c0))] = 0
  v[:, int(np.ceil(c1)):] = 0
  return v


def test_mnist_c_stripe_dotted_line_zigzag_and_spatter():
  x = jnp.asarray(_digits(1))
  img = np.asarray(x[0, ..., 0], np.float64)
  ref = img.copy()
  ref[:, :7], ref[:, 21:] = 1 - ref[:, :7], 1 - ref[:, 21:]
  np.testing.assert_allclose(_apply('stripe', 1, x, variant='mnist_c')[0, ..., 0], ref, atol=1e-7)
  # Dotted line from (0, 5) to (27, 20); column pairs 0-1, 4-5, … removed.
  line = _line(28, 0, 5, 27, 20)
  for c in range(0, 28, 4):
    line[:, c:c + 2] = 0
  ours = _apply('dotted_line', 1, x, jnp.asarray([[5, 20]]), 'mnist_c')[0, ..., 0]
  np.testing.assert_allclose(ours, np.clip(img + line, 0, 1), atol=1e-5)
  # Zigzag from r0 = 10 with r1 − r0 = −4: endpoints (0, 0), ((2i+1)·2, ±2), then (d, r/(2(d − max_c))),
  # rotated by θ = arctan(−4/23) and moved to (2, 10).
  theta = np.arctan(-4 / 23)
  d = 23 / np.cos(theta)
  pts = [(0, 0)] + [((2 * i + 1) * 2, (-1) ** i * 2) for i in range(int((d - 2) // 4) + 1)]
  max_c = 4 * (d // 4)
  pts.append((d, pts[-1][1] / (2 * (d - max_c))))
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  cs, rs = rot @ np.array(pts, float).T + np.array([[2], [10]])
  zz = sum(_line(28, cs[i - 1], rs[i - 1], cs[i], rs[i]) for i in range(1, len(cs)))
  ours = _apply('zigzag', 1, x, jnp.asarray([[10, -4]]), 'mnist_c')[0, ..., 0]
  np.testing.assert_allclose(ours, np.clip(img + zz, 0, 1), atol=1e-5)
  # Spatter (MNIST-C mud): skimage gaussian (mode 'nearest') of N(loc, scale), threshold, blur, ≥ 0.8.
  p = C.PARAMS['mnist_c']['spatter'][3]
  z = np.random.default_rng(1).normal(size=(28, 28))
  liquid = sk_gaussian(p['loc'] + p['scale'] * z, sigma=p['sigma'])
  m = sk_gaussian((liquid > p['threshold']).astype(np.float32), sigma=p['sigma2'])
  m[m < 0.8] = 0
  ref = np.clip(img * (1 - m) + 63 / 255 * m, 0, 1)
  ours = _apply('spatter', 4, x, jnp.asarray(z[None], jnp.float32), 'mnist_c')[0, ..., 0]
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert m.max() > 0                                        # the mask is not empty


# Severity monotonicity: the mean L2 distance to the clean image does not fall with severity and ends
# higher. Parameter sets that do not grow by construction are left out: ImageNet-C glass_blur
# (severities 1/2 and 3/4 trade σ against swap distance and iterations: equal within noise),
# CIFAR-10-C glass_blur (σ falls from severity 3 to 4) and elastic_transform (its affine jitter
# shrinks with severity); pixelate (the distance depends on how the reduced size divides the image:
# ImageNet-C's 32 → 19 → 32 is farther than 32 → 16 → 32); MNIST-C fog, spatter (severities 4-5 thin
# the mud mask) and shear/scale (the L2 distance saturates once the digit has moved away).
MONOTONE = {
    'imagenet_c': ['gaussian_noise', 'speckle_noise', 'gaussian_blur', 'defocus_blur', 'zoom_blur', 'brightness',
                   'contrast'],
    'cifar10_c': ['gaussian_noise', 'speckle_noise', 'gaussian_blur', 'defocus_blur', 'zoom_blur', 'brightness',
                  'contrast'],
    'mnist_c': ['brightness', 'contrast', 'zoom_blur', 'translate'],
}
MONOTONE_SLOW = {    # the same check for corruptions that take longer to compile on CPUs
    'imagenet_c': ['motion_blur', 'fog', 'elastic_transform', 'jpeg_compression'],
    'cifar10_c': ['motion_blur', 'fog', 'jpeg_compression'],
    'mnist_c': ['glass_blur', 'motion_blur', 'rotate', 'jpeg_compression'],
}


def _check_monotone(variant, names):
  """Draws shared across severities where their shapes allow (normals, angle, signs, fog/elastic noise)."""
  s = 28 if variant == 'mnist_c' else 32
  x = jnp.asarray(_digits(4)) if variant == 'mnist_c' else _unit(_gray(4, s))
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  for name in names:
    dist = []
    for sev in C.severities(name, variant):
      p = C.PARAMS[variant][name][sev - 1]
      draws = None
      if name in ('gaussian_noise', 'speckle_noise'):
        draws = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
      elif name == 'motion_blur':
        draws = jnp.full((4,), 20.0)
      elif name in ('rotate', 'translate'):
        draws = jnp.ones((4, 2))
      elif C.CORRUPTIONS[name].draw is not None:
        draws = jax.vmap(lambda k, xi: C.CORRUPTIONS[name].draw(k, xi, p))(keys, x)
      dist.append(np.sqrt(((_apply(name, sev, x, draws, variant) - np.asarray(x)) ** 2).sum((1, 2, 3))).mean())
    dist = np.array(dist)
    assert np.all(np.diff(dist) > -1e-3 * dist[:-1]) and dist[-1] > 1.2 * dist[0], (variant, name, dist.round(3))


@pytest.mark.parametrize('variant', sorted(MONOTONE))
def test_more_severe_is_farther_from_the_clean_image(variant):
  _check_monotone(variant, MONOTONE[variant])


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(MONOTONE_SLOW))
def test_more_severe_is_farther_from_the_clean_image_slow_corruptions(variant):
  _check_monotone(variant, MONOTONE_SLOW[variant])


def _check_keyed(cases, x):
  """``corrupt`` (per-image draws from the key) for each (variant, name, severity), in one program."""
  outs = jax.jit(lambda k, x: {c: C.corrupt(k, x, *c[1:], c[0]) for c in cases})(jax.random.PRNGKey(0), x)
  for case, y in outs.items():
    y = np.asarray(y)
    assert y.shape == x.shape and np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, case
    assert np.abs(y - np.asarray(x)).mean() > 1e-3, case
  return outs


def test_corrupt_keeps_shape_and_range_with_per_image_draws():
  """The random corruptions at their strongest severity through the keyed path, 28×28×1 (shot and
  impulse noise: ``test_shot_and_impulse_noise_statistics``)."""
  x = jnp.asarray(_digits(2))
  cases = [('mnist_c', n, C.severities(n, 'mnist_c')[-1]) for n in C.PARAMS['mnist_c']
           if C.CORRUPTIONS[n].draw is not None and n not in ('shot_noise', 'impulse_noise')]   # tested above
  outs = _check_keyed(cases, x)
  g = np.asarray(outs['mnist_c', 'gaussian_noise', 5]) - np.asarray(x)
  assert not np.allclose(g[0], g[1])                        # each image has its own draws
  with pytest.raises(ConfigError):
    C.corrupt(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), 'jpeg_compression', 1, 'cifar10_c')


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(2, 28, 28, 1), (2, 32, 32, 1), (2, 32, 32, 3)])
def test_corrupt_keeps_shape_and_range_everywhere(shape):
  """All variants, corruptions and severities; 3 channels for all but JPEG."""
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, shape), jnp.float32)
  cases = [(v, n, s) for v in C.VARIANTS for n in C.PARAMS[v] for s in C.severities(n, v)
           if not (n == 'jpeg_compression' and shape[-1] == 3)]
  _check_keyed(cases, x)


def test_correct_per_severity_counts_with_a_brightness_threshold_model():
  """Class 1 iff mean intensity > 0.5; brightness +c (no clipping here) moves the mean by exactly c."""
  means = np.array([0.22, 0.31, 0.37, 0.44, 0.05, 0.48])
  x = jnp.asarray(np.broadcast_to(means[:, None, None, None], (6, 8, 8, 1)), jnp.float32)
  labels = jnp.ones(6, jnp.int32)
  mask = jnp.asarray([1, 1, 1, 1, 0, 1], jnp.float32)

  def logits_fn(z):
    m = z.mean(axis=(1, 2, 3))
    return jnp.stack([0.5 - m, m - 0.5], -1)

  got = np.asarray(C.correct_per_severity(logits_fn, jax.random.PRNGKey(0), x, labels, 'brightness', mask=mask))
  c = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
  expected = [((means + ci > 0.5) * np.asarray(mask)).sum() for ci in c]
  np.testing.assert_array_equal(got, expected)
  both = C.correct_per_corruption(logits_fn, jax.random.PRNGKey(0), x, labels, ['brightness', 'contrast'],
                                  sequential=True)
  np.testing.assert_array_equal(both['brightness'], [((means + ci > 0.5)).sum() for ci in c])
  np.testing.assert_array_equal(both['contrast'], [0] * 5)                  # constant images: no change


def test_mean_corruption_error_by_hand():
  model = {'a': [0.1, 0.2, 0.3], 'b': [0.5]}
  base = {'a': [0.2, 0.4, 0.6], 'b': [0.25]}
  ce = C.corruption_errors(model, base)
  assert ce == pytest.approx({'a': 0.6 / 1.2, 'b': 2.0})
  assert C.mean_corruption_error(model, base) == pytest.approx((0.5 + 2.0) / 2)
  # Relative: Σ(E − E_clean)/Σ(E_base − E_base,clean) = (0.6 − 0.15)/(1.2 − 0.3) and (0.5 − 0.05)/(0.25 − 0.1).
  rel = C.corruption_errors(model, base, clean_error=0.05, baseline_clean_error=0.1)
  assert rel == pytest.approx({'a': 0.45 / 0.9, 'b': 3.0})
  with pytest.raises(ValueError):
    C.corruption_errors({'a': [0.1, 0.2]}, base)
  # From per-seed accuracies [[S] per seed]: error = 1 − seed mean.
  errs = C.mean_errors({'a': [[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], 'b': [0.5]})
  assert C.corruption_errors(errs, base) == pytest.approx(ce)


def test_registry_and_severity_lists():
  for family, names in C.FAMILY_CORRUPTIONS.items():
    assert set(names) <= set(C.PARAMS[C.FAMILY_VARIANT[family]])
  for variant in C.VARIANTS:
    assert set(C.PARAMS[variant]) <= set(C.CORRUPTIONS)
  assert all(1 <= s <= len(C.severities(n, 'mnist_c')) for n, s in C.MNIST_C_SEVERITY.items())
  assert set(C.MNIST_C_SEVERITY) == set(C.FAMILY_CORRUPTIONS['mnist'])
  assert C.severities('stripe', 'mnist_c') == [1] and C.severities('fog', 'cifar10_c') == [1, 2, 3, 4, 5]
  np.testing.assert_array_equal(C.jpeg_quant_table(50)[0, :3], [16, 11, 10])      # quality 50: the base table
  assert C.jpeg_quant_table(18)[0, 0] == (16 * (5000 // 18) + 50) // 100
  with pytest.raises(ConfigError):
    C.corrupt(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), 'stripe', 1, 'cifar10_c')
  with pytest.raises(ConfigError):
    C.corrupt(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), 'fog', 6, 'mnist_c')
