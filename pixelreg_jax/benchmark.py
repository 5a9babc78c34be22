r"""Times the jitted train step; prints one JSON line per measurement.

    python -m pixelreg_jax.benchmark --config=configs/cifar10.py            # paper shapes, random data
    python -m pixelreg_jax.benchmark --config=configs/cifar10.py --mode=input   # real vs synthetic data
    python -m pixelreg_jax.benchmark --config=configs/cifar10.py --config.num_seeds=7

Modes:
  step   random data at the config's shapes (batch + pairs, image size, model): ms/step and
         images/s, where an image is one forward+backward (batch + 2·pairs per step and seed),
         the same count as ../shared/bench/torch_reference_step.py.
  input  the same step fed from the config's real dataset and from synthetic data of the same
         shapes, interleaved, to show the input pipeline costs nothing (ratio ≈ 1).
Timing excludes compilation (``--warmup`` steps) and blocks on the result of the last step.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from pixelreg_jax import data as data_lib
from pixelreg_jax import errors, train

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/cifar10.py', 'Experiment config.', lock_config=False)
flags.DEFINE_enum('mode', 'step', ['step', 'input'], 'What to measure.')
flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation).')
flags.DEFINE_integer('repeats', 3, 'Measurements (the median is reported).')
flags.DEFINE_integer('num_train', 0, 'Synthetic training images (0 = enough for the timed steps).')
FLAGS = flags.FLAGS


def synthetic_host_data(config, num_train: int, seed: int = 0) -> dict:
  """Random uint8 images/labels with the config's dataset shapes (and its reg source's)."""
  rng = np.random.default_rng(seed)
  info = data_lib.get_info(config.dataset)
  reg_info = data_lib.get_info(config.reg.dataset)
  train_x = rng.integers(0, 256, (num_train,) + info.image_shape, dtype=np.uint8)
  return {'train_x': train_x, 'train_y': rng.integers(0, info.num_classes, num_train).astype(np.int32),
          'test_x': train_x[:16], 'test_y': np.zeros(16, np.int32),
          'reg_x': rng.integers(0, 256, (max(config.reg.num_images, 2),) + reg_info.image_shape, dtype=np.uint8)}


def time_steps(trainer: train.Trainer, steps: int, warmup: int, repeats: int) -> list[float]:
  """Seconds per step, one value per repeat (compilation excluded)."""
  state = trainer.initial_state()
  order = trainer.epoch_order(trainer.keys.shuffle, trainer.train_indices_dev, 0)
  spe = trainer.steps_per_epoch
  i = 0
  for _ in range(warmup):
    state, m = trainer.train_step(state, trainer.keys, order, trainer.data, i % spe)
    i += 1
  jax.block_until_ready(m)
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, m = trainer.train_step(state, trainer.keys, order, trainer.data, i % spe)
      i += 1
    jax.block_until_ready(m)
    out.append((time.perf_counter() - t) / steps)
  return out


def describe(config, trainer: train.Trainer) -> dict:
  pairs = config.reg.pairs_per_step if config.reg.alpha > 0 else 0
  return {'framework': 'jax', 'arch': config.model.name, 'batch': config.batch_size, 'pairs': pairs,
          'size': config.image_size, 'channels': config.model.channels, 'width': config.model.width,
          'num_seeds': config.num_seeds, 'half_precision': config.half_precision,
          'devices': len(trainer.mesh.devices.flat), 'device_kind': jax.devices()[0].device_kind,
          'jax': jax.__version__}


def images_per_step(config) -> int:
  pairs = config.reg.pairs_per_step if config.reg.alpha > 0 else 0
  return config.num_seeds * (config.batch_size + 2 * pairs)


def bench_step(config, steps: int, warmup: int, repeats: int, num_train: int = 0) -> dict:
  config.val_fraction = 0.0
  num_train = num_train or config.batch_size * (steps + warmup + 1)
  trainer = train.Trainer(config, None, synthetic_host_data(config, num_train))
  per_step = float(np.median(time_steps(trainer, steps, warmup, repeats)))
  return {**describe(config, trainer), 'mode': 'step', 'ms_per_step': round(1000 * per_step, 3),
          'images_per_sec': round(images_per_step(config) / per_step, 1)}


def bench_input(config, steps: int, warmup: int, repeats: int) -> dict:
  """Real data vs synthetic data of identical shapes, measured alternately."""
  real = train.Trainer(config, None, train.load_data(config))
  fake_host = synthetic_host_data(config, len(real.host['train_x']))
  fake_host['reg_x'] = fake_host['reg_x'][:len(real.host['reg_x'])]
  synthetic = train.Trainer(config, None, fake_host)
  t_real, t_fake = [], []
  for _ in range(repeats):
    t_real += time_steps(real, steps, warmup, 1)
    t_fake += time_steps(synthetic, steps, warmup, 1)
  r, f = float(np.median(t_real)), float(np.median(t_fake))
  return {**describe(config, real), 'mode': 'input', 'dataset': config.dataset,
          'ms_per_step_real': round(1000 * r, 3), 'ms_per_step_synthetic': round(1000 * f, 3),
          'real_over_synthetic': round(r / f, 4)}


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  with errors.one_line_errors():
    if FLAGS.mode == 'step':
      result = bench_step(config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats, FLAGS.num_train)
    else:
      result = bench_input(config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
