"""Every config file loads and validates, and the paper experiments carry the paper's settings."""
import glob
import importlib.util
import os

import pytest

from conftest import ROOT
from pixelreg_jax import config as config_lib
from pixelreg_jax import experiments

CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize('path', CONFIG_FILES, ids=[os.path.basename(p) for p in CONFIG_FILES])
def test_config_loads_and_validates(path):
  c = load(path)
  config_lib.validate(c)
  c.reg.alpha = 0.0                     # the baseline override is valid too
  config_lib.validate(c)


@pytest.mark.parametrize('name,dataset,reg,model,alpha,th,epochs', [
    ('mnist_by_mnist', 'mnist', 'mnist', 'resnet18', 4, 0.2, 20),
    ('fashion_mnist_by_mnist', 'fashion_mnist', 'mnist', 'resnet18', 10, 0.4, 20),
    ('cifar10_by_imagenet', 'cifar10', 'imagenet32', 'resnet18', 10, 0.8, 40),
    ('cifar10_by_cifar10', 'cifar10', 'cifar10', 'resnet18', 10, 0.8, 40),
    ('cifar100_by_imagenet', 'cifar100', 'imagenet32', 'resnet34', 10, 0.8, 60),
])
def test_paper_settings(name, dataset, reg, model, alpha, th, epochs):
  """METHOD.md §5-6, typed in again here."""
  c = load(os.path.join(ROOT, 'configs', f'{name}.py'))
  assert (c.dataset, c.reg.dataset, c.model.name, c.reg.alpha, c.reg.threshold, c.num_epochs) == \
      (dataset, reg, model, alpha, th, epochs)
  assert (c.batch_size, c.reg.pairs_per_step, c.reg.num_images, c.model.width) == (64, 16, 5000, 64)
  assert (c.optim.learning_rate, c.optim.momentum, c.optim.weight_decay) == (0.1, 0.9, 0.0)
  assert (c.optim.lr_decay, c.optim.lr_step_epochs, c.optim.lr_cycle_epochs) == (0.3, 4, 20)
  assert c.augment == dataset.startswith('cifar') and c.val_fraction == 0.01


def test_design_card_entry_is_cifar10_by_imagenet():
  a = load(os.path.join(ROOT, 'configs', 'cifar10.py'))
  b = experiments.experiment('cifar10_by_imagenet')
  assert a.to_dict() == b.to_dict()
