"""Shared fixtures: tiny configs and generated data (no downloads, no real datasets needed).

pixelreg_jax is imported as installed (``pip install -e .``; launch/test.sh does it), not from
sys.path tricks: the tests and the subprocesses they start see the same package.
"""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile

# One persistent XLA compilation cache for the whole session, shared with the subprocesses the
# tests start (they inherit the environment): the many tests that build the same tiny programs
# compile each once (a first train step: 25 s cold, 6.5 s from the cache, on 2 cores). A fresh
# directory per session, removed at exit; set before JAX is imported.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='pixelreg-jax-test-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
# XLA:CPU's cheap backend passes: the tests' tiny programs compile about twice as fast (a first
# train step: 24 s → 13 s) and run a little slower, which they do not notice. Numerics are
# IEEE float32 either way; results are compared with tolerances or between runs of one setting.
_CHEAP = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _CHEAP).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelreg_jax import config as config_lib  # noqa: E402

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
  return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y}


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


# ---------------------------------------------------------------- the real Fashion-MNIST and small models on it

FASHION_MNIST_IDX = '/usr/share/datasets/fashion-mnist'   # Debian's dataset-fashion-mnist
_IDX_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
              'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}


def require(ok: bool, reason: str) -> None:
  """Skips the test unless ``ok``; under CI=true fails instead: CI has the real data and the test
  tools, and must run the tests that need them."""
  if ok:
    return
  if os.environ.get('CI', '').lower() == 'true':
    pytest.fail(f'{reason}: CI must run this test')
  pytest.skip(reason)


def real_fashion_mnist(split: str):
  """The real Fashion-MNIST ``split`` from Debian's IDX files: (uint8 [N, 28, 28, 1], int labels [N])."""
  from pixelreg_jax import data as data_lib
  paths = [os.path.join(FASHION_MNIST_IDX, f) for f in _IDX_FILES[split]]
  missing = [p for p in paths if not os.path.isfile(p)]
  require(not missing, f'real Fashion-MNIST IDX files missing: {missing}')
  return data_lib.read_idx_split(*paths)


def require_module(name: str, what: str) -> None:
  """Skips (fails under CI) unless the module ``name`` imports; ``what`` says how to install it."""
  try:
    importlib.import_module(name)
  except ImportError:
    require(False, f'{what} is not installed')


def require_foolbox() -> None:
  require_module('foolbox', "foolbox 3.3.4 (a test dependency: pip install -e '.[test]')")


def fit_adam(logits_fn, params, x, y, steps: int, learning_rate: float, batch: int = 128, seed: int = 0):
  """``params`` after ``steps`` Adam steps on the softmax cross-entropy of ``logits_fn(params, x)``,
  each on ``batch`` images drawn with ``np.random.default_rng(seed)``: the small real-data models
  the attack parity tests use."""
  import jax
  import optax
  opt = optax.adam(learning_rate)

  @jax.jit
  def step(p, state, xb, yb):
    grad = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(logits_fn(q, xb), yb).mean())(p)
    updates, state = opt.update(grad, state)
    return optax.apply_updates(p, updates), state

  state, rng = opt.init(params), np.random.default_rng(seed)
  for _ in range(steps):
    i = rng.integers(0, len(x), batch)
    params, state = step(params, state, x[i], y[i])
  return params
