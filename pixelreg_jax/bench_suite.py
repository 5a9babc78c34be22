r"""The GPU benchmark suite: one command, every figure of the performance section.

    python -m pixelreg_jax.benchmark --mode=suite --out=docs/performance/<device>   (≈ 5 min on an H100)
    python -m pixelreg_jax.benchmark --mode=suite --tiny --out=/tmp/suite          (CPU smoke test)

At the paper's CIFAR10 shapes (``configs/cifar10.py``: ResNet18 width 64, batch 64 + 16 pairs,
32×32 grayscale) it measures, on random data:
  train    ms/step, images/s, TFLOP/s (XLA's FLOP count) and MFU for each number of seeds in
           ``seeds`` (default 1 and 7, vmapped in one program), float32 and bfloat16, the fused
           pass and the release's three passes; for every multi-seed row the projected wall
           time of those seeds × 40 epochs of CIFAR10's 49 500 training images;
  eval     the evaluation of ``eval_seeds`` seeds (default 7): a noise sweep of 10 levels ×
           ``eval_images`` test images (default 10 000), transferred FGSM (10 levels, the source's
           gradient included), and the release-protocol Boundary attack on ``boundary_images``
           images (default 1000) × ``boundary_steps`` steps (default 50), one repeat, one seed.
           The evaluated network is trained for a few steps first on synthetic classes (image
           brightness), so that its predictions vary and the Boundary attack finds starts as on
           a real model.
Writes ``suite.jsonl`` (one JSON object per measurement, with device, JAX version, command) and
``suite.md`` (the tables) to ``out``, and returns the records.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import evaluation, rundir
from pixelreg_jax import trainer as trainer_lib

CIFAR10_TRAIN_IMAGES, PAPER_EPOCHS = 49500, 40


def environment() -> dict:
  d = jax.devices()[0]
  return {'device_kind': d.device_kind, 'platform': d.platform, 'devices': jax.device_count(), 'jax': jax.__version__,
          'command': ' '.join([os.path.basename(sys.executable), '-m', 'pixelreg_jax.benchmark'] + sys.argv[1:])}


def _variant(config, seeds: int, half: bool, fused: bool):
  c = copy.deepcopy(config)
  c.num_seeds, c.half_precision, c.fused_pass = seeds, half, fused
  return c


def train_rows(config, seeds_list, steps: int, warmup: int, repeats: int, peak_tflops: float,
               bench_step: Callable, log: Callable[[str], None]) -> list[dict]:
  """``bench_step`` for every (seeds, dtype, pass); multi-seed rows get the paper-run projection."""
  rows = []
  for k in seeds_list:
    for half in (False, True):
      for fused in (True, False):
        t = time.time()
        r = bench_step(_variant(config, k, half, fused), steps, warmup, repeats, peak_tflops=peak_tflops)
        steps_per_run = (CIFAR10_TRAIN_IMAGES // config.batch_size) * PAPER_EPOCHS
        r.update(mode='suite_train', dtype='bfloat16' if half else 'float32', passes='fused' if fused else 'three',
                 projected_minutes=round(steps_per_run * r['ms_per_step'] / 1000 / 60, 2),
                 projected_for=f'{k} seed(s) x {PAPER_EPOCHS} epochs x {CIFAR10_TRAIN_IMAGES} images',
                 wall_seconds=round(time.time() - t, 1))
        log(json.dumps(r))
        rows.append(r)
  return rows


def _eval_model(config, seeds: int, train_steps: int, num_images: int, rng: np.random.Generator):
  """A ``rundir.Run`` of ``seeds`` models trained ``train_steps`` steps on brightness classes, and
  test images/labels of the same kind."""
  info = data_lib.get_info(config.dataset)
  n_train = max(config.batch_size * (train_steps + 1), 2 * config.batch_size)

  def make(n):
    x = rng.integers(0, 256, (n,) + info.image_shape, dtype=np.uint8)
    # Brightness shifts make the classes learnable in a few steps.
    shift = rng.integers(0, info.num_classes, n)
    x = np.clip(x.astype(np.int32) // 2 + (shift * 128 // info.num_classes)[:, None, None, None], 0, 255)
    return x.astype(np.uint8), shift.astype(np.int32)

  train_x, train_y = make(n_train)
  test_x, test_y = make(num_images)
  c = copy.deepcopy(config)
  c.num_seeds, c.reg.alpha, c.val_fraction, c.population = seeds, 0.0, 0.0, ''
  trainer = trainer_lib.create_trainer(c, {'train_x': train_x, 'train_y': train_y, 'test_x': test_x[:16],
                                           'test_y': test_y[:16]})
  state, order = trainer.init_state(), trainer.epoch_order(0)
  for i in range(train_steps):
    state, _ = trainer.step(state, order, i % trainer.steps_per_epoch)
  run = rundir.Run('', c, trainer.model, jax.device_get(state.variables()), {})
  return run, test_x, test_y


def eval_rows(config, eval_seeds: int, eval_images: int, boundary_images: int, boundary_steps: int,
              train_steps: int, batch_size: int, log: Callable[[str], None]) -> list[dict]:
  """Seconds of the noise sweep, transferred FGSM and the Boundary attack (compilation included
  in ``seconds``; ``seconds_warm`` is a second, compiled run)."""
  rng = np.random.default_rng(0)
  run, images, labels = _eval_model(config, eval_seeds, train_steps, eval_images, rng)
  ctx = evaluation.Context(run, images, labels, 0, evaluation.test_set_bounds(run, images), jax.random.PRNGKey(0),
                           evaluation.evaluation_config({'batch_size': batch_size}), source=run)
  rows = []

  def timed(name: str, fn, **extra):
    out = {}
    for key in ('seconds', 'seconds_warm'):
      t = time.time()
      result = fn()
      jax.block_until_ready(result)
      out[key] = round(time.time() - t, 2)
    r = {'mode': 'suite_eval', 'what': name, **extra, **out}
    log(json.dumps(r))
    rows.append(r)
    return result

  level_accuracy = evaluation.curves.level_accuracy
  timed('noise sweep', lambda: level_accuracy(ctx, 'gaussian'), seeds=eval_seeds, images=eval_images, levels=10)
  timed('transferred FGSM', lambda: level_accuracy(ctx, 'fgsm'), seeds=eval_seeds, images=eval_images, levels=10)
  one_config = copy.deepcopy(run.config)
  one_config.num_seeds = 1
  one = rundir.Run('', one_config, run.model, jax.tree.map(lambda v: v[:1], run.variables), {})
  b_ctx = evaluation.Context(one, images, labels, 0, ctx.bounds, ctx.key, evaluation.evaluation_config(
      {'batch_size': batch_size, 'boundary.steps': boundary_steps, 'boundary.images': boundary_images,
       'boundary.repeats': 1, 'boundary.batch': min(boundary_images, 1000)}))
  result = timed('Boundary (release protocol)',
                 lambda: evaluation.boundary.boundary_eval(b_ctx, images[:boundary_images]), seeds=1,
                 images=boundary_images, steps=boundary_steps, repeats=1)
  rows[-1]['no_start'] = result['no_start'][0][0]
  return rows


def markdown(env: dict, rows: list[dict]) -> str:
  """The tables of ``suite.md``."""
  out = [f'# Benchmark suite on {env["device_kind"]} ({env["devices"]} device(s)), JAX {env["jax"]}', '',
         f'Command: `{env["command"]}`', '', '## Train step (ResNet18 width 64, batch 64 + 16 pairs, 32×32×1)', '',
         '| seeds | dtype | pass | ms/step | images/s | TFLOP/s | MFU | 40 epochs of CIFAR10 (min) |',
         '|---|---|---|---|---|---|---|---|']
  for r in rows:
    if r['mode'] == 'suite_train':
      out.append(f'| {r["num_seeds"]} | {r["dtype"]} | {r["passes"]} | {r["ms_per_step"]:.1f} | '
                 f'{r["images_per_sec"]:.0f} | {r.get("tflops_per_sec", float("nan")):.2f} | '
                 f'{r.get("mfu", float("nan")):.3f} | {r["projected_minutes"]:.1f} |')
  out += ['', '## Evaluation', '', '| what | seeds | images | seconds (with compile) | seconds (compiled) |',
          '|---|---|---|---|---|']
  for r in rows:
    if r['mode'] == 'suite_eval':
      what = r['what'] + (f', {r["steps"]} steps' if 'steps' in r else f', {r.get("levels", "")} levels')
      out.append(f'| {what} | {r["seeds"]} | {r["images"]} | {r["seconds"]} | {r["seconds_warm"]} |')
  return '\n'.join(out) + '\n'


def run(config, out: str, bench_step: Callable, *, seeds_list=(1, 7), steps: int = 20, warmup: int = 2,
        repeats: int = 3, eval_seeds: int = 7, eval_images: int = 10000, boundary_images: int = 1000,
        boundary_steps: int = 50, eval_train_steps: int = 100, eval_batch_size: int = 1000,
        peak_tflops: float = 0.0, log: Optional[Callable[[str], None]] = None) -> list[dict]:
  """Runs the suite; writes ``out/suite.jsonl`` and ``out/suite.md``; returns the records."""
  log = log or print
  config_lib.validate(config)
  os.makedirs(out, exist_ok=True)
  env = environment()
  t = time.time()
  rows = train_rows(config, seeds_list, steps, warmup, repeats, peak_tflops, bench_step, log)
  rows += eval_rows(config, eval_seeds, eval_images, boundary_images, boundary_steps, eval_train_steps,
                    eval_batch_size, log)
  env['suite_seconds'] = round(time.time() - t, 1)
  with open(os.path.join(out, 'suite.jsonl'), 'w') as f:
    for r in rows:
      f.write(json.dumps({**env, **r}) + '\n')
  with open(os.path.join(out, 'suite.md'), 'w') as f:
    f.write(markdown(env, rows))
  return rows
