r"""Times the jitted train step; prints one JSON line per measurement.

    python -m pixelreg_jax.benchmark --config=configs/cifar10.py            # paper shapes, random data
    python -m pixelreg_jax.benchmark --config=configs/cifar10.py --mode=input   # real vs synthetic data
    python -m pixelreg_jax.benchmark --config=configs/cifar10.py --config.num_seeds=7

Modes:
  step     random data at the config's shapes (batch + pairs, image size, model): ms/step and
           images/s, where an image is one forward+backward (batch + 2·pairs per step and seed),
           the same count as benchmarks/torch_reference_step.py; XLA's FLOP count of the
           step, achieved TFLOP/s, MFU when the device's peak is known (or --peak_tflops).
  seeds    ``step`` for each K in --seeds_list (K models vmapped in one step), with the projected
           wall time of K seeds × --project_epochs epochs of a --project_images-image dataset
           (default: CIFAR10's 49 500 training images, 40 epochs).
  devices  ``step`` on the first N devices for each N in --devices_list (same global batch).
  input    the same step fed from the config's real dataset and from synthetic data of the same
           shapes, interleaved, to show the input pipeline costs nothing (ratio ≈ 1).
  suite    the GPU benchmark suite (``bench_suite``): train step for 1 and 7 seeds × float32 /
           bfloat16 × fused / three passes with the 7-seed × 40-epoch projection, and evaluation
           speed; ``suite.jsonl`` and ``suite.md`` in --out. ``--tiny`` shrinks it for a CPU.
Timing excludes compilation (``--warmup`` steps) and blocks on the result of the last step.
"""
from __future__ import annotations

import copy
import json
import sys
import time

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from pixelreg_jax import bench_suite, cli, configs, parallel, population
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import trainer as trainer_lib
from pixelreg_jax.errors import ConfigError

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  global _CONFIG
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'Experiment config (default: configs/cifar10.py, the paper\'s CIFAR10 shapes).',
      lock_config=False)
  flags.DEFINE_enum('mode', 'step', ['step', 'seeds', 'devices', 'input', 'suite'], 'What to measure.')
  flags.DEFINE_string('out', 'runs/benchmark', 'Output directory of --mode=suite.')
  flags.DEFINE_bool('tiny', False, '--mode=suite at toy sizes (width 4, 2 seeds, few images): a CPU smoke test.')
  flags.DEFINE_list('seeds_list', ['1', '2', '4', '7'], 'num_seeds values for --mode=seeds.')
  flags.DEFINE_list('devices_list', None, 'Device counts for --mode=devices (default 1, 2, 4, … up to all).')
  for name in ('seeds_list', 'devices_list'):
    flags.register_validator(name, lambda v: v is None or all(s.isdigit() and int(s) >= 1 for s in v),
                             f'--{name} must be a comma-separated list of positive integers')
  flags.DEFINE_integer('project_epochs', 40, 'Epochs of the projected run (--mode=seeds).', lower_bound=1)
  flags.DEFINE_integer('project_images', 49500, 'Training images of the projected run (--mode=seeds).',
                       lower_bound=1)
  flags.DEFINE_float('peak_tflops', 0.0, "The device's peak TFLOP/s for MFU (0 = known devices only).",
                     lower_bound=0.0)
  flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.', lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation).', lower_bound=0)
  flags.DEFINE_integer('repeats', 3, 'Measurements (the median is reported).', lower_bound=1)
  flags.DEFINE_integer('num_train', 0, 'Synthetic training images (0 = enough for the timed steps).', lower_bound=0)


def synthetic_host_data(config, num_train: int, seed: int = 0) -> dict:
  """Random uint8 images/labels with the config's dataset shapes (and its reg source's)."""
  rng = np.random.default_rng(seed)
  info = data_lib.get_info(config.dataset)
  reg_info = data_lib.get_info(config.reg.dataset)
  train_x = rng.integers(0, 256, (num_train,) + info.image_shape, dtype=np.uint8)
  n_reg = max(config.reg.num_images, 2)
  return {'train_x': train_x, 'train_y': rng.integers(0, info.num_classes, num_train).astype(np.int32),
          'test_x': train_x[:16], 'test_y': np.zeros(16, np.int32),
          'reg': {'images': rng.integers(0, 256, (n_reg,) + reg_info.image_shape, dtype=np.uint8),
                  'labels': rng.integers(0, reg_info.num_classes, n_reg).astype(np.int32)}}


def time_steps(trainer: trainer_lib.Trainer, steps: int, warmup: int, repeats: int) -> list[float]:
  """Seconds per step, one value per repeat (compilation excluded), through the public step API."""
  state = trainer.init_state()
  order = trainer.epoch_order(0)
  spe = trainer.steps_per_epoch
  i = 0
  for _ in range(warmup):
    state, m = trainer.step(state, order, i % spe)
    i += 1
  jax.block_until_ready(m)
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, m = trainer.step(state, order, i % spe)
      i += 1
    jax.block_until_ready(m)
    out.append((time.perf_counter() - t) / steps)
  return out


def describe(config, trainer: trainer_lib.Trainer) -> dict:
  pairs = config.reg.pairs_per_step if trainer.regularizer else 0
  return {'framework': 'jax', 'arch': config.model.name, 'batch': config.batch_size, 'pairs': pairs,
          'size': config_lib.input_size(config), 'channels': config.model.channels, 'width': config.model.width,
          'num_seeds': config.num_seeds, 'members': trainer.M, 'seed_parallelism': population.seed_mode(config),
          'fused_pass': bool(config.fused_pass),
          'half_precision': config.half_precision,
          'devices': len(trainer.mesh.devices.flat), 'device_kind': jax.devices()[0].device_kind,
          'jax': jax.__version__}


def images_per_step(trainer: trainer_lib.Trainer) -> int:
  pairs = trainer.config.reg.pairs_per_step if trainer.regularizer else 0
  return trainer.M * (trainer.config.batch_size + 2 * pairs)


# Dense peak TFLOP/s by device kind and compute dtype (vendor figures, no sparsity).
PEAK_TFLOPS = {
    ('NVIDIA H100 80GB HBM3', 'bfloat16'): 989.0, ('NVIDIA H100 80GB HBM3', 'float32'): 494.0,   # TF32
    ('NVIDIA H200', 'bfloat16'): 989.0, ('NVIDIA H200', 'float32'): 494.0,
    ('NVIDIA A100-SXM4-40GB', 'bfloat16'): 312.0, ('NVIDIA A100-SXM4-40GB', 'float32'): 156.0,
}


def step_flops(trainer: trainer_lib.Trainer) -> float:
  """XLA's FLOP count of one train step over all devices and members, or 0 when it gives none.

  XLA reports the per-device program of a sharded computation, hence × devices.
  """
  try:
    return float(trainer.step_cost().get('flops', 0.0)) * len(trainer.mesh.devices.flat)
  except Exception:  # pylint: disable=broad-except
    return 0.0


def bench_step(config, steps: int, warmup: int, repeats: int, num_train: int = 0, mesh=None,
               peak_tflops: float = 0.0) -> dict:
  config.val_fraction = 0.0
  num_train = num_train or config.batch_size * (steps + warmup + 1)
  trainer = trainer_lib.create_trainer(config, synthetic_host_data(config, num_train), mesh=mesh)
  per_step = float(np.median(time_steps(trainer, steps, warmup, repeats)))
  out = {**describe(config, trainer), 'mode': 'step', 'ms_per_step': round(1000 * per_step, 3),
         'images_per_sec': round(images_per_step(trainer) / per_step, 1)}
  flops = step_flops(trainer)
  if flops:
    out['gflops_per_step'] = round(flops / 1e9, 2)
    out['tflops_per_sec'] = round(flops / per_step / 1e12, 3)
    dtype = 'bfloat16' if config.half_precision else 'float32'
    peak = peak_tflops or PEAK_TFLOPS.get((jax.devices()[0].device_kind, dtype), 0.0)
    if peak:
      out['mfu'] = round(flops / per_step / 1e12 / (peak * out['devices']), 4)
  return out


def bench_seeds(config, seeds_list, steps, warmup, repeats, epochs, images, peak_tflops=0.0) -> list[dict]:
  """Step time for K vmapped seeds, and the projected wall time of K seeds × epochs."""
  out = []
  for k in seeds_list:
    c = copy.deepcopy(config)
    c.num_seeds = k
    r = bench_step(c, steps, warmup, repeats, peak_tflops=peak_tflops)
    steps_per_run = (images // c.batch_size) * epochs
    r.update(mode='seeds', projected_minutes=round(steps_per_run * r['ms_per_step'] / 1000 / 60, 1),
             projected_for=f'{k} seeds x {epochs} epochs x {images} images')
    out.append(r)
  return out


def bench_devices(config, devices_list, steps, warmup, repeats, peak_tflops=0.0) -> list[dict]:
  out = []
  for n in devices_list:
    r = bench_step(copy.deepcopy(config), steps, warmup, repeats, mesh=parallel.make_mesh(jax.devices()[:n]),
                   peak_tflops=peak_tflops)
    r['mode'] = 'devices'
    out.append(r)
  return out


def bench_input(config, steps: int, warmup: int, repeats: int) -> dict:
  """Real data vs synthetic data of identical shapes, measured alternately."""
  real = trainer_lib.create_trainer(config)
  fake_host = synthetic_host_data(config, len(real.host['train_x']))
  synthetic = trainer_lib.create_trainer(config, fake_host)
  t_real, t_fake = [], []
  for _ in range(repeats):
    t_real += time_steps(real, steps, warmup, 1)
    t_fake += time_steps(synthetic, steps, warmup, 1)
  r, f = float(np.median(t_real)), float(np.median(t_fake))
  return {**describe(config, real), 'mode': 'input', 'dataset': config.dataset,
          'ms_per_step_real': round(1000 * r, 3), 'ms_per_step_synthetic': round(1000 * f, 3),
          'real_over_synthetic': round(r / f, 4)}


def tiny_suite_config(config):
  """The suite's config at toy sizes (a CPU smoke test of the whole suite)."""
  c = copy.deepcopy(config)
  c.model.width, c.batch_size, c.reg.num_images, c.reg.pairs_per_step = 4, 16, 64, 4
  return c


def run_suite(config, out: str, tiny: bool = False, peak_tflops: float = 0.0) -> list[dict]:
  """``bench_suite.run`` at the paper's sizes, or at toy sizes with ``tiny``."""
  if not tiny:
    return bench_suite.run(config, out, bench_step, peak_tflops=peak_tflops, log=logging.info)
  return bench_suite.run(tiny_suite_config(config), out, bench_step, seeds_list=(1,), steps=1, warmup=1, repeats=1,
                         eval_seeds=2, eval_images=64, boundary_images=8, boundary_steps=3, eval_train_steps=3,
                         eval_batch_size=32, peak_tflops=peak_tflops, log=logging.info)


def main(argv):
  del argv
  config = cli.config_value(_CONFIG)
  if FLAGS.mode == 'step':
    results = [bench_step(config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats, FLAGS.num_train,
                          peak_tflops=FLAGS.peak_tflops)]
  elif FLAGS.mode == 'seeds':
    results = bench_seeds(config, [int(k) for k in FLAGS.seeds_list], FLAGS.steps, FLAGS.warmup, FLAGS.repeats,
                          FLAGS.project_epochs, FLAGS.project_images, FLAGS.peak_tflops)
  elif FLAGS.mode == 'devices':
    n = len(jax.devices())
    counts = [int(d) for d in FLAGS.devices_list] if FLAGS.devices_list else \
        [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= n]
    if max(counts) > n:
      raise ConfigError(f'--devices_list={",".join(map(str, counts))}: only {n} device(s) here')
    results = bench_devices(config, counts, FLAGS.steps, FLAGS.warmup, FLAGS.repeats, FLAGS.peak_tflops)
  elif FLAGS.mode == 'suite':
    results = run_suite(config, FLAGS.out, FLAGS.tiny, FLAGS.peak_tflops)
  else:
    results = [bench_input(config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats)]
  for r in results:
    print(json.dumps(r), flush=True)


if __name__ == '__main__':
  define_flags()
  sys.argv = configs.with_default(sys.argv, 'cifar10')
  cli.run(main)
