"""Preprocessing as the release does it (docs/method.md §2, §4): luma grayscale, native 28×28 inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pixelreg_jax import config as config_lib
from pixelreg_jax import errors, models
from pixelreg_jax import input_pipeline as pipe


def test_luma_equals_pil_convert_L_on_uint8():
  """torchvision's Grayscale is PIL's convert('L'): integer luma, rounded."""
  rgb = np.random.default_rng(0).integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
  rgb[0, 0, 0] = (255, 255, 255)
  rgb[0, 0, 1] = (0, 0, 0)
  rgb[0, 0, 2] = (1, 2, 3)
  expected = np.stack([np.asarray(Image.fromarray(im).convert('L')) for im in rgb])[..., None]
  np.testing.assert_array_equal(np.asarray(pipe.luma(jnp.asarray(rgb))), expected)
  # to_unit: the luma, scaled to [0, 1]; not the channel mean.
  unit = np.asarray(pipe.to_unit(jnp.asarray(rgb), 1))
  np.testing.assert_allclose(unit, expected / 255.0, atol=1e-7)
  assert np.abs(unit - rgb.mean(-1, keepdims=True) / 255.0).max() > 0.05


def test_luma_of_float_images_uses_the_itu_weights():
  x = np.random.default_rng(1).uniform(0, 1, (3, 5, 5, 3)).astype(np.float32)
  expected = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  np.testing.assert_allclose(np.asarray(pipe.luma(jnp.asarray(x)))[..., 0], expected, rtol=1e-6)


def test_native_size_is_kept_and_padding_is_an_option():
  x = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
  native = np.asarray(pipe.model_input(jnp.asarray(x), None, 1))
  assert native.shape == (2, 28, 28, 1)
  np.testing.assert_allclose(native, x / 255.0, atol=1e-7)
  padded = np.asarray(pipe.model_input(jnp.asarray(x), 32, 1))
  assert padded.shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(padded[:, 2:30, 2:30], native)
  assert not padded[:, :2].any() and not padded[:, :, -2:].any()
  # The attack space is native; the network's size is applied after (to_network).
  net = np.asarray(pipe.to_network(jnp.asarray(native), 32, 'mnist'))
  np.testing.assert_array_equal(net, padded)


def test_config_default_is_the_datasets_own_size():
  c = config_lib.base_config()
  assert c.image_size == 0
  c.dataset = 'fashion_mnist'
  assert config_lib.input_size(c) == 28
  c.dataset = 'cifar10'
  assert config_lib.input_size(c) == 32
  c.image_size = 32
  assert config_lib.input_size(c) == 32
  c.image_size = 20
  with pytest.raises(errors.ConfigError, match='image_size'):
    config_lib.validate(c)


def test_resnet_at_28_reaches_a_1x1_pool_like_the_release():
  """28 → 14 → 7 → 4 through the stride-2 stages; the 4×4 average pool ends at 1×1."""
  model = models.create_model('resnet18', 10, width=4)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  logits, taps = model.apply(variables, x, train=False)
  assert logits.shape == (2, 10)
  assert [t.shape[1] for t in taps] == [28, 28, 14, 7, 4]
  assert variables['params']['head']['kernel'].shape == (4 * 8, 10)   # 8w channels × 1 × 1


def _torchvision_reduction(rgb: np.ndarray, flip: bool) -> np.ndarray:
  """The release's transform written with PIL as torchvision runs it on a PIL image:
  CenterCrop((144, 256)) -> (flip) -> Resize((36, 64)) bilinear -> Grayscale."""
  h, w = rgb.shape[:2]
  top, left = int(round((h - 144) / 2.0)), int(round((w - 256) / 2.0))
  img = Image.fromarray(rgb[top:top + 144, left:left + 256])
  if flip:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(img.resize((64, 36), Image.BILINEAR).convert('L'))


@pytest.mark.parametrize('shape', [(375, 500), (231, 301)])
def test_imagenet_reduction_follows_the_release_transform(shape):
  tf = pytest.importorskip('tensorflow')
  from pixelreg_jax import tfds_source
  rng = np.random.default_rng(3)
  # A smooth image with structure (the resize filters differ in detail, not on smooth content).
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  base = np.stack([128 + 100 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], -1)
  rgb = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
  for flip in (False, True):
    got = tfds_source.release_imagenet_crop(tf.constant(rgb), flip=flip).numpy()[..., 0]
    want = _torchvision_reduction(rgb, flip)
    assert got.shape == (36, 64)
    # TF's antialiased bilinear vs PIL's: equal up to a couple of grey levels.
    assert np.abs(got.astype(int) - want).max() <= 3, np.abs(got.astype(int) - want).max()
    assert np.abs(got.astype(int) - want).mean() < 0.6


def test_imagenet_reduction_pads_small_images_like_torchvision():
  tf = pytest.importorskip('tensorflow')
  from pixelreg_jax import tfds_source
  rgb = np.full((100, 200, 3), 200, np.uint8)     # smaller than 144×256: zero border
  got = tfds_source.release_imagenet_crop(tf.constant(rgb)).numpy()[..., 0]
  # 22 rows of zeros on top and bottom (of 144) -> ~5.5 of 36 rows dark; 28 columns each side -> 7 of 64.
  assert got[0].max() == 0 and got[-1].max() == 0 and got[:, 0].max() == 0
  assert got[18, 32] == 200
