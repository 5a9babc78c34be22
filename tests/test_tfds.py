"""Every dataset and regularization source through TFDS (tfds.testing.mock_data: no files, no network)."""
import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from conftest import tiny_config  # noqa: E402
from pixelreg_jax import data, errors, regularizers, tfds_source  # noqa: E402
from pixelreg_jax import input_pipeline as pipe  # noqa: E402
from pixelreg_jax import trainer as trainer_lib  # noqa: E402
from pixelreg_jax.trainer import create_trainer, train_loop  # noqa: E402

CASES = [('mnist', (28, 28, 1), 10), ('fashion_mnist', (28, 28, 1), 10), ('cifar10', (32, 32, 3), 10),
         ('cifar100', (32, 32, 3), 100), ('imagenet32', (32, 32, 3), 1000)]


@pytest.fixture
def mock_tfds(monkeypatch):
  monkeypatch.setattr(tfds_source, 'network_available', lambda timeout=3.0: True)
  monkeypatch.setattr(data, 'SOURCES', [s for s in data.SOURCES if s[0] != 'system'])   # TFDS only
  with tfds.testing.mock_data(num_examples=24):
    yield


@pytest.mark.parametrize('name,shape,classes', CASES)
def test_dataset_through_tfds(tmp_path, mock_tfds, name, shape, classes):
  x, y = data.load_split(name, 'train', str(tmp_path), download=True)
  assert x.shape == (24,) + shape and x.dtype == np.uint8
  assert y.dtype == np.int32 and y.min() >= 0 and y.max() < classes
  x2, y2 = data.load_split(name, 'train', str(tmp_path), download=True)
  np.testing.assert_array_equal(x, x2)                     # deterministic order
  x5, _ = data.load_split(name, 'train', str(tmp_path), download=True, num_examples=5)
  np.testing.assert_array_equal(x5, x[:5])                 # the first N
  family = data.DATASETS[name].family
  net = np.asarray(pipe.network_input(x, pipe.PipelineSpec(image_size=32, channels=1, family=family)))
  assert net.shape == (24, 32, 32, 1)
  lo, hi = (-2.5, 2.5) if family == 'cifar' else (0.0, 1.0)
  assert net.min() >= lo - 1e-6 and net.max() <= hi + 1e-6


def test_without_network_tfds_is_not_tried_for_long(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, 'network_available', lambda timeout=3.0: False)
  with pytest.raises(errors.DataUnavailableError, match='no network'):
    data.load_split('cifar100', 'test', str(tmp_path), download=True)


def test_training_on_tfds_data_with_a_different_reg_source(tmp_path, mock_tfds):
  c = tiny_config(dataset='cifar10', augment=True, num_epochs=1, batch_size=8, data_dir=str(tmp_path), download=True)
  c.reg.dataset = 'imagenet32'
  c.reg.num_images = 20
  host = trainer_lib.load_data(c)
  assert host['reg']['images'].shape == (20, 32, 32, 3)
  result = train_loop(create_trainer(c, host), log=lambda s: None).result
  assert np.isfinite(result['test_loss'])


def test_imagenet2012_is_reduced_like_the_release_and_fed_at_its_size(tmp_path, mock_tfds):
  x, _ = data.load_split('imagenet2012', 'train', str(tmp_path), download=True, num_examples=6)
  assert x.shape == (6, 36, 64, 1) and x.dtype == np.uint8
  c = tiny_config(num_epochs=1, data_dir=str(tmp_path), download=True, batch_size=4)
  c.reg.dataset, c.reg.num_images, c.reg.keep_size = 'imagenet2012', 12, True
  host = trainer_lib.load_data(c)
  assert host['reg']['images'].shape == (12, 36, 64, 1)
  trainer = create_trainer(c, host)
  assert trainer.data.reg.matrix.shape == (12, 12)
  batch = pipe.train_batch(trainer.data, trainer.train_indices_dev[0], 0, 0, trainer.keys.augment[0], trainer.spec)
  pairs = regularizers.pair_batch(trainer.data.reg, trainer.keys.pairs[0], 0, 0.8, trainer.spec)
  assert batch['image'].shape == (4, 28, 28, 1) and pairs['reg_a'].shape == (4, 36, 64, 1)   # native sizes
  # The classification and the 36×64 pair images differ in size: the step runs the three passes.
  assert np.isfinite(train_loop(trainer, log=lambda s: None).result['test_loss'])
