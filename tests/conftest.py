"""Shared fixtures: tiny configs and generated data (no downloads, no real datasets needed).

pixelreg_jax is imported as installed (``pip install -e .``; launch/test.sh does it), not from
sys.path tricks: the tests and the subprocesses they start see the same package.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pixelreg_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """A ResNet18 of width 4 on 28×28 'fashion_mnist'-shaped data: compiles and steps in seconds."""
  c = config_lib.base_config()
  c.dataset = 'fashion_mnist'
  c.model.width = 4
  c.batch_size = 8
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.val_fraction = 0.1
  c.reg.dataset = 'fashion_mnist'
  c.reg.num_images = 24
  c.reg.pairs_per_step = 4
  c.reg.alpha = 4.0
  c.reg.threshold = 0.2
  c.log_every_steps = 1000
  c.download = False
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


def synthetic_host_data(n_train=64, n_test=32, shape=(28, 28, 1), num_classes=10, seed=0):
  """Class-dependent blobs, so a model can learn them; uint8 like real data."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = rng.uniform(0, 60, (n,) + shape)
    h = shape[0]
    for k in range(n):
      r = 3 + (labels[k] % 5) * (h // 6)
      c = 3 + (labels[k] // 5) * (h // 3)
      base[k, r:r + 5, c:c + 5] += 180
    return np.clip(base, 0, 255).astype(np.uint8), labels

  train_x, train_y = make(n_train)
  test_x, test_y = make(n_test)
  return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y, 'reg_x': train_x}


@pytest.fixture
def host_data():
  return synthetic_host_data()


def write_imported_dataset(data_dir, name='fashion_mnist', n_train=256, n_test=64, seed=0):
  """Writes ``name`` in the imported (npz) layout the pipeline reads, from synthetic blobs."""
  from pixelreg_jax import data as data_lib
  host = synthetic_host_data(n_train=n_train, n_test=n_test, seed=seed)
  data_lib.save_npz(data_lib.imported_path(str(data_dir), name, 'train'), host['train_x'], host['train_y'])
  data_lib.save_npz(data_lib.imported_path(str(data_dir), name, 'test'), host['test_x'], host['test_y'])
  return host


def cli_overrides(data_dir, **extra):
  """Command-line overrides making configs/fashion_mnist.py tiny and offline."""
  base = {'data_dir': str(data_dir), 'download': False, 'model.width': 4, 'train_subset': 0,
          'batch_size': 16, 'eval_batch_size': 64, 'val_fraction': 0.1, 'reg.num_images': 40,
          'reg.pairs_per_step': 4, 'log_every_steps': 1000}
  base.update(extra)
  return [f'--config.{k}={v}' for k, v in base.items()]


def run_env():
  """The environment for a CLI subprocess: this one, with TensorFlow's C++ logging quiet."""
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env
