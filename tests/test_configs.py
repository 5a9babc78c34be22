"""Every config file loads and validates, and the paper experiments carry the paper's settings."""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_env
from pixelreg_jax import config as config_lib
from pixelreg_jax import configs

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(configs.CONFIG_DIR, '*.py'))
                      if not os.path.basename(p).startswith('_'))


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
  """docs/method.md §5-6, typed in again here."""
  c = load(configs.config_path(name))
  assert (c.dataset, c.reg.dataset, c.model.name, c.reg.alpha, c.reg.threshold, c.num_epochs) == \
      (dataset, reg, model, alpha, th, epochs)
  assert (c.batch_size, c.reg.pairs_per_step, c.reg.num_images, c.model.width) == (64, 16, 5000, 64)
  assert (c.optim.learning_rate, c.optim.momentum, c.optim.weight_decay) == (0.1, 0.9, 0.0)
  assert (c.optim.lr_decay, c.optim.lr_step_epochs, c.optim.lr_cycle_epochs) == (0.3, 4, 20)
  assert c.augment == dataset.startswith('cifar') and c.val_fraction == 0.01


def test_design_card_entry_is_cifar10_by_imagenet():
  a = load(configs.config_path('cifar10'))
  b = load(configs.config_path('cifar10_by_imagenet'))
  assert a.to_dict() == b.to_dict()


def test_configs_install_with_the_package_and_the_root_folder_links_to_them():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  assert {'fashion_mnist', 'cifar10', 'mnist_by_mnist', 'cifar100_by_imagenet'} <= names
  assert configs.CONFIG_DIR == os.path.join(os.path.dirname(os.path.abspath(config_lib.__file__)), 'configs')
  assert os.path.realpath(os.path.join(ROOT, 'configs')) == os.path.realpath(configs.CONFIG_DIR)


def test_config_flags_loads_a_config_through_the_root_link_and_from_any_directory(tmp_path):
  """--config=configs/<name>.py from the repository root, the package's file from elsewhere."""
  script = ('import sys; from absl import flags; from ml_collections import config_flags; '
            "c = config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv); "
            'print(c.value.dataset, c.value.reg.alpha, c.value.model.width)')
  for cwd, path in ((ROOT, 'configs/fashion_mnist.py'), (tmp_path, configs.config_path('fashion_mnist'))):
    out = subprocess.run([sys.executable, '-c', script, f'--config={path}', '--config.reg.alpha=3'], cwd=cwd,
                         env=run_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['fashion_mnist', '3.0', '8'], (cwd, out.stdout)
