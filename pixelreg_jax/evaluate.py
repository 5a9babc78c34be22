r"""Robustness evaluation of a trained run directory (METHOD.md section 7).

    python -m pixelreg_jax.evaluate --workdir=runs/reg --source_workdir=runs/source \
        --attacks=gaussian,uniform,salt_pepper,fgsm,boundary

Restores the best checkpoint of every seed in ``--workdir``, sweeps each attack over its 10
levels (vmapped over levels and over seeds, jitted), and writes ``<workdir>/robustness.json``;
prints a one-line JSON summary. FGSM transfers the gradient of the unregularized model in
``--source_workdir`` (its seed ``--source_seed_index``); without a source it is skipped.
All seeds see the same noise draws, so models are compared on identical perturbations.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pixelreg_jax import attacks as attacks_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import cli, runs, train

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_string('workdir', None, 'Run directory to evaluate.', required=True)
  flags.DEFINE_string('source_workdir', None, 'Unregularized run whose gradients FGSM transfers.')
  flags.DEFINE_integer('source_seed_index', 0, 'Which seed of the source run provides the gradients.')
  flags.DEFINE_list('attacks', ['gaussian', 'uniform', 'salt_pepper', 'fgsm'],
                    'Attacks: gaussian, uniform, salt_pepper, fgsm, boundary.')
  flags.DEFINE_integer('num_images', 0, 'Evaluate on N test images (0 = all).')
  flags.DEFINE_integer('first_image', 0, 'Index of the first test image used (e.g. to tune on images disjoint '
                       'from those reported).')
  flags.DEFINE_integer('batch_size', 500, 'Images per evaluation batch.')
  flags.DEFINE_integer('seed', 0, 'Seed of the noise draws and of the Boundary attack images.')
  flags.DEFINE_integer('boundary_images', 1000, 'Random test images for the Boundary attack.')
  flags.DEFINE_integer('boundary_steps', 50, 'Boundary attack steps (the release: 50).')
  flags.DEFINE_integer('boundary_repeats', 5, 'Independent Boundary attack runs (best kept per image).')
  flags.DEFINE_integer('boundary_batch', 250, 'Images per Boundary attack batch.')
  flags.DEFINE_string('output', None, 'Where to write the JSON (default <workdir>/robustness.json).')


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """[N, ...] -> ([nb, B, ...], [nb, B], mask [nb, B]) with zero padding at the end."""
  n = len(images)
  batch_size = min(batch_size, n)
  nb = math.ceil(n / batch_size)
  pad = nb * batch_size - n
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  shape = (nb, batch_size)
  return images.reshape(shape + images.shape[1:]), labels.reshape(shape), mask.reshape(shape)


def level_sweep(run: runs.Run, attack: attacks_lib.LevelAttack, levels: np.ndarray, images: np.ndarray,
                labels: np.ndarray, key: jax.Array, batch_size: int,
                source: Optional[Callable] = None, first_image: int = 0) -> np.ndarray:
  """Accuracy of every seed at every level: [K, L].

  One jitted program per seed group: ``lax.map`` over batches, ``vmap`` over levels, and over
  seeds either ``vmap`` (accelerators) or a loop of the same compiled program (CPUs, where
  vmapped convolutions are slow; ``config.seed_parallelism``). Every seed sees the same noise.
  FGSM scales by the range of the release's 64-image test batches (``attacks.batch_range``;
  ``first_image`` is the test-set index of ``images[0]``).
  """
  xb, yb, mb = padded_batches(images, labels, batch_size)
  if attack.needs_source:
    lo, hi = attacks_lib.batch_range(model_inputs(run, images), offset=first_image)
    lob, hib = (padded_batches(a, labels, batch_size)[0] for a in (lo, hi))
  else:
    lob = hib = np.zeros(xb.shape[:2], np.float32)   # unused

  def one_model(variables, xb, yb, mb):
    def batch(args):
      i, x_u8, y, m, lo, hi = args
      x = run.model_input(x_u8)
      aux = attacks_lib.FgsmAux(attacks_lib.gradient_sign(source, x, y), lo, hi) if attack.needs_source else None
      return attacks_lib.correct_per_level(run.logits_fn(variables), attack, jax.random.fold_in(key, i), x, y,
                                           jnp.asarray(levels), aux, m)
    correct = jax.lax.map(batch, (jnp.arange(xb.shape[0]), xb, yb, mb, lob, hib))   # [nb, L]
    return correct.sum(0) / mb.sum()

  if train.seed_mode(run.config) == 'vmap':
    return np.asarray(jax.jit(jax.vmap(one_model, in_axes=(0, None, None, None)))(run.variables, xb, yb, mb))
  sweep = jax.jit(one_model)
  return np.stack([np.asarray(sweep(run.seed_variables(k), xb, yb, mb)) for k in range(run.num_seeds)])


def model_inputs(run: runs.Run, images: np.ndarray, chunk: int = 2000) -> np.ndarray:
  """uint8 native images -> float32 [0, 1] at the network's input (host array), in chunks."""
  fn = jax.jit(run.model_input)
  return np.concatenate([np.asarray(fn(images[i:i + chunk])) for i in range(0, len(images), chunk)])


def boundary_eval(run: runs.Run, images: np.ndarray, key: jax.Array, cfg: attacks_lib.BoundaryConfig,
                  repeats: int, batch_size: int) -> dict:
  """Boundary attack on every seed: median over images of the best ‖δ‖²/D over repeats."""
  results = []
  xb, _, mb = padded_batches(images, np.zeros(len(images), np.int32), batch_size)

  @jax.jit
  def attack(variables, k, x_u8):
    x = run.model_input(x_u8)
    logits_fn = run.logits_fn(variables)
    predict = lambda z: jnp.argmax(logits_fn(z), -1)  # noqa: E731
    out = attacks_lib.boundary_attack(predict, k, x, predict(x), cfg)
    return out['distance'], out['is_adversarial'] | ~out['success']

  for s in range(run.num_seeds):
    v = run.seed_variables(s)
    dists = np.full((repeats, xb.shape[0] * xb.shape[1]), np.inf)
    valid = True
    for r in range(repeats):
      per_batch = []
      for i in range(xb.shape[0]):
        d, ok = attack(v, jax.random.fold_in(jax.random.fold_in(key, r), i), xb[i])
        per_batch.append(np.asarray(d))
        valid &= bool(np.all(np.asarray(ok)))
      dists[r] = np.concatenate(per_batch)
    dists = dists[:, mb.reshape(-1) > 0]
    best = dists.min(axis=0)
    results.append({'median_distance': float(np.median(best)),
                    'median_distance_per_repeat': [float(np.median(d)) for d in dists],
                    'failed_starts': int(np.sum(~np.isfinite(best))),
                    'all_adversarial': valid})
  return {'steps': cfg.steps, 'repeats': repeats, 'num_images': len(images),
          'median_distance': [r['median_distance'] for r in results],
          'median_distance_per_repeat': [r['median_distance_per_repeat'] for r in results],
          'failed_starts': [r['failed_starts'] for r in results],
          'all_adversarial': all(r['all_adversarial'] for r in results)}


def evaluate_run(workdir: str, attack_names: list[str], source_workdir: Optional[str] = None,
                 source_seed_index: int = 0, num_images: int = 0, batch_size: int = 500, seed: int = 0,
                 first_image: int = 0,
                 boundary_images: int = 1000, boundary_cfg: attacks_lib.BoundaryConfig = attacks_lib.BoundaryConfig(),
                 boundary_repeats: int = 5, boundary_batch: int = 250, log=print) -> dict:
  """Evaluates every seed of a run against the named attacks; returns the robustness record."""
  unknown = [a for a in attack_names if a not in attacks_lib.LEVEL_ATTACKS and a != 'boundary']
  if unknown:
    raise cli.ConfigError(f'unknown attack(s) {unknown}; choose from '
                             f'{sorted(attacks_lib.LEVEL_ATTACKS) + ["boundary"]}')
  run = runs.load_run(workdir, log=log)
  dataset = run.config.dataset
  source = None
  if 'fgsm' in attack_names:
    if not source_workdir:
      log('fgsm skipped: it needs --source_workdir (an unregularized run to transfer from)')
      attack_names = [a for a in attack_names if a != 'fgsm']
    else:
      src = runs.load_run(source_workdir, log=log)
      if src.config.dataset != dataset:
        raise cli.ConfigError(f'--source_workdir was trained on {src.config.dataset}, not {dataset}')
      if not 0 <= source_seed_index < src.num_seeds:
        raise cli.ConfigError(f'--source_seed_index={source_seed_index} but the source has {src.num_seeds} seed(s)')
      source = src.logits_fn(src.seed_variables(source_seed_index))
  images, labels = data_lib.load_split(dataset, 'test', run.config.data_dir, download=run.config.download)
  total = len(images)
  end = first_image + num_images if num_images else total
  images, labels = images[first_image:end], labels[first_image:end]
  if not len(images):
    raise cli.ConfigError(f'no test images in [{first_image}, {end}); the test set has {total}')
  key = jax.random.PRNGKey(seed)
  record = {'workdir': os.path.abspath(workdir), 'dataset': dataset, 'seeds': run.seeds,
            'alpha': run.config.reg.alpha, 'threshold': run.config.reg.threshold,
            'reg_dataset': run.config.reg.dataset, 'num_images': int(len(images)), 'first_image': first_image,
            'source_workdir': os.path.abspath(source_workdir) if source else None,
            'attacks': {}, 'seconds': {}}
  for name in attack_names:
    if name == 'boundary':
      continue
    t = time.time()
    attack = attacks_lib.LEVEL_ATTACKS[name]
    levels = attacks_lib.attack_levels(dataset, name)
    acc = level_sweep(run, attack, levels, images, labels, jax.random.fold_in(key, zlib.crc32(name.encode())),
                      batch_size, source, first_image)
    record['attacks'][name] = {'levels': levels.tolist(), 'accuracy': acc.tolist()}
    record['seconds'][name] = time.time() - t
    log(f'{name}: accuracy {" ".join(f"{a:.3f}" for a in acc.mean(0))} (mean over {run.num_seeds} seed(s)) '
        f'in {record["seconds"][name]:.1f}s')
  if record['attacks']:
    first = next(iter(record['attacks'].values()))
    record['clean_accuracy'] = [row[0] for row in first['accuracy']]
  if 'boundary' in attack_names:
    t = time.time()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), min(boundary_images, len(images)), replace=False))
    record['boundary'] = boundary_eval(run, images[pick], jax.random.fold_in(key, 7), boundary_cfg,
                                       boundary_repeats, boundary_batch)
    record['seconds']['boundary'] = time.time() - t
    log(f'boundary: median ‖δ‖²/D {record["boundary"]["median_distance"]} in {record["seconds"]["boundary"]:.1f}s')
  return record


def summary(record: dict) -> dict:
  """One line: clean accuracy and the mean accuracy over levels of each attack, seed-averaged."""
  out = {'workdir': record['workdir'], 'num_images': record['num_images']}
  if 'clean_accuracy' in record:
    out['clean_accuracy'] = float(np.mean(record['clean_accuracy']))
  for name, r in record['attacks'].items():
    out[f'{name}_mean_accuracy'] = float(np.mean(r['accuracy']))
  if 'boundary' in record:
    out['boundary_median_distance'] = float(np.mean(record['boundary']['median_distance']))
  return out


def main(argv):
  del argv
  cli.quiet_logging()
  with cli.one_line_errors():
    record = evaluate_run(
        FLAGS.workdir, FLAGS.attacks, FLAGS.source_workdir, FLAGS.source_seed_index, FLAGS.num_images,
        FLAGS.batch_size, FLAGS.seed, FLAGS.first_image, FLAGS.boundary_images,
        attacks_lib.BoundaryConfig(steps=FLAGS.boundary_steps), FLAGS.boundary_repeats, FLAGS.boundary_batch)
  out = FLAGS.output or os.path.join(FLAGS.workdir, 'robustness.json')
  with open(out, 'w') as f:
    json.dump(record, f, indent=2)
  print(json.dumps({**summary(record), 'output': out}), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
