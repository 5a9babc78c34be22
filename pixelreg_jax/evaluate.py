r"""Robustness evaluation of a trained run directory (docs/method.md §7-8, and beyond the paper).

    python -m pixelreg_jax.evaluate --workdir=runs/reg --source_workdir=runs/source \
        --attacks=gaussian,uniform,salt_pepper,fgsm,boundary,pgd_linf,pgd_l2,corruptions

Restores the best checkpoint of every seed in ``--workdir`` (verified; which checkpoint is
recorded), runs each named evaluator and writes ``<workdir>/robustness.json``; prints a one-line
JSON summary. Evaluators (``EVALUATORS``; add one with ``@evaluator(name)`` on a function
``fn(ctx, record, name)`` that adds its results to the record):

  gaussian, uniform, salt_pepper, fgsm   the paper's 10-level sweeps (``attacks.levels``); FGSM
                                         transfers the gradient of the unregularized model in
                                         ``--source_workdir`` and scales by the release's 64-image
                                         test batches; skipped without a source
  boundary                               decision-based Boundary attack, ``--boundary_protocol``
                                         'release' (foolbox 3.3.4 as the release calls it; the
                                         default) or 'strong'; bounds = the whole test set's range;
                                         score = mean over repeats of the median ‖δ‖²/D
  pgd_linf, pgd_l2, pgd_linf_steps40, …  white-box PGD (``attacks.whitebox.PGD_VARIANTS``)
  pgd                                    all PGD variants (steps / restarts / norms), for the
                                         gradient-masking checks written beside them
  corruptions                            common corruptions (CIFAR-10-C set) or MNIST-C
                                         (``attacks.corruptions``), 1-5 severities each

All seeds see the same noise draws, so models are compared on identical perturbations. Images
are perturbed at their native size in [0, 1] (MNIST family 28×28, as in the release); the model
function adds any padding and the normalisation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from pixelreg_jax import attacks as attacks_lib
from pixelreg_jax import cli, population, rundir
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax.attacks import corruptions as corruptions_lib
from pixelreg_jax.attacks import masking, whitebox
from pixelreg_jax.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_string('workdir', None, 'Run directory to evaluate.', required=True)
  flags.DEFINE_string('source_workdir', None, 'Unregularized run whose gradients FGSM transfers.')
  flags.DEFINE_integer('source_seed_index', 0, 'Which seed of the source run provides the gradients.')
  flags.DEFINE_list('attacks', ['gaussian', 'uniform', 'salt_pepper', 'fgsm'],
                    f'Evaluators: {", ".join(names())}.')
  flags.DEFINE_integer('num_images', 0, 'Evaluate on N test images (0 = all).', lower_bound=0)
  flags.DEFINE_integer('first_image', 0, 'Index of the first test image used (e.g. to tune on images disjoint '
                       'from those reported).', lower_bound=0)
  flags.DEFINE_integer('batch_size', 500, 'Images per evaluation batch.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed of the noise draws and of the Boundary attack images.')
  flags.DEFINE_enum('boundary_protocol', 'release', list(attacks_lib.boundary.PROTOCOLS),
                    "Boundary attack: 'release' (foolbox 3.3.4 as the release runs it) or 'strong'.")
  flags.DEFINE_integer('boundary_images', 1000, 'Random test images for the Boundary attack (the release: 1000).',
                       lower_bound=1)
  flags.DEFINE_integer('boundary_steps', 50, 'Boundary attack steps (the release: 50).', lower_bound=1)
  flags.DEFINE_integer('boundary_repeats', 5, 'Boundary attack repeats (the release: 5).', lower_bound=1)
  flags.DEFINE_integer('boundary_batch', 250, 'Images per Boundary attack batch.', lower_bound=1)
  flags.DEFINE_integer('pgd_images', 0, 'Test images for white-box PGD (0 = the same as the other attacks).',
                       lower_bound=0)
  flags.DEFINE_integer('corruption_images', 0, 'Test images for the corruptions (0 = the same as the others).',
                       lower_bound=0)
  flags.DEFINE_list('corruptions', [], 'Corruptions to run (default: the CIFAR-10-C set or MNIST-C, by dataset).')
  flags.DEFINE_string('output', None, 'Where to write the JSON (default <workdir>/robustness.json).')


# ---------------------------------------------------------------------------------------
# The evaluation context and the generic sweep.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """Settings of the evaluators that have any."""
  boundary: attacks_lib.BoundaryConfig = attacks_lib.BoundaryConfig()
  boundary_images: int = 1000
  boundary_repeats: int = 5
  boundary_batch: int = 250
  pgd_images: int = 0
  corruption_images: int = 0
  corruptions: tuple[str, ...] = ()   # () = the family's benchmark list


@dataclasses.dataclass
class Context:
  """What every evaluator gets.

  Attributes:
    run: the evaluated run (all seeds).
    images, labels: the evaluated test images (uint8 native) and labels.
    first_image: test-set index of ``images[0]``.
    bounds: (min, max) of the whole test set in [0, 1] input space (the release's bounds).
    key: the evaluation's PRNG key (each evaluator folds in its name).
    seed: the seed ``key`` comes from (also picks the Boundary attack's images).
    batch_size: images per batch.
    source: the FGSM source run (or None) and ``source_seed``, the seed index it uses.
    options: ``Options``.
    log: progress lines.
  """
  run: rundir.Run
  images: np.ndarray
  labels: np.ndarray
  first_image: int
  bounds: tuple[float, float]
  key: jax.Array
  seed: int
  batch_size: int
  source: Optional[rundir.Run]
  source_seed: int
  options: Options
  log: Callable[[str], None]

  def key_for(self, name: str) -> jax.Array:
    return jax.random.fold_in(self.key, zlib.crc32(name.encode()))

  def subset(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (self.images, self.labels) if not n else (self.images[:n], self.labels[:n])


def sweep(ctx: Context, correct_fn: Callable, key: jax.Array, images: Optional[np.ndarray] = None,
          labels: Optional[np.ndarray] = None, per_image: tuple = (), shared: Any = None) -> Any:
  """Accuracy of every seed under ``correct_fn``, over all images: a pytree of [K, ...] arrays.

  ``correct_fn(logits_fn, key, x, labels, mask, *per_image_batch, shared) -> correct counts``
  (any pytree, e.g. [L] per level) runs on one batch: x [B, H, W, C] in [0, 1] native size. The
  program maps over batches (``lax.map``, batch i keyed by fold_in(key, i)) and vmaps over seeds
  on accelerators; on CPUs (``seed_parallelism`` 'loop') the host loops over seeds and batches
  around one compiled batch program (``_host_loop_sweep``). Images, per-image arrays and
  ``shared`` (e.g. the FGSM source's variables) are arguments, not constants of the program.
  """
  images = ctx.images if images is None else images
  labels = ctx.labels if labels is None else labels
  (xb, yb, *extras), mb = pipe.pad_to_batches(ctx.batch_size, images, labels, *per_image)
  run = ctx.run
  extras = tuple(extras)

  def one_batch(variables, i, x_u8, y, m, ex, shared):
    return correct_fn(run.logits_fn(variables), jax.random.fold_in(key, i), run.model_input(x_u8), y, m, *ex, shared)

  if population.seed_mode(run.config) != 'vmap':
    return _host_loop_sweep(jax.jit(one_batch), run, xb, yb, mb, extras, shared)

  def one_model(variables, xb, yb, mb, extras, shared):
    correct = jax.lax.map(lambda a: one_batch(variables, *a, shared), (jnp.arange(xb.shape[0]), xb, yb, mb, extras))
    return jax.tree.map(lambda c: c.sum(0) / mb.sum(), correct)

  fn = jax.jit(population.seeded(one_model, run.num_seeds, (0, None, None, None, None, None), 'vmap'))
  return jax.device_get(fn(run.variables, xb, yb, mb, extras, shared))


def _host_loop_sweep(batch_fn: Callable, run, xb, yb, mb, extras: tuple, shared: Any) -> Any:
  """``sweep`` on CPUs: one compiled (model, batch) program, called for each seed and batch.

  XLA:CPU runs backward convolutions inside a loop body (``lax.map`` / ``scan`` / ``while``)
  20-35× slower than outside one (non-canonical layouts; jax-ml/jax#12868), which made FGSM and
  PGD sweeps crawl; keeping the seed and batch loops on the host avoids it and gives the same keys
  and sums as the one-program path.
  """
  per_seed = []
  for k in range(run.num_seeds):
    variables = run.seed_variables(k)
    total = None
    for i in range(xb.shape[0]):
      c = batch_fn(variables, jnp.int32(i), xb[i], yb[i], mb[i], tuple(e[i] for e in extras), shared)
      total = c if total is None else jax.tree.map(jnp.add, total, c)
    per_seed.append(jax.tree.map(lambda c: c / mb.sum(), total))
  return jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed))


def _curve_log(ctx: Context, name: str, acc: np.ndarray, seconds: float) -> None:
  ctx.log(f'{name}: accuracy {" ".join(f"{a:.3f}" for a in np.mean(acc, 0))} (mean over '
          f'{ctx.run.num_seeds} seed(s)) in {seconds:.1f}s')


# ---------------------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------------------


EVALUATORS: dict[str, Callable[[Context, dict], None]] = {}


def evaluator(*names: str):
  """Registers ``fn(ctx, record)`` (it adds its results to ``record``) under ``names``."""
  def register(fn):
    for n in names:
      EVALUATORS[n] = fn
    return fn
  return register


def names() -> list[str]:
  return list(EVALUATORS)


# -- the paper's level sweeps --------------------------------------------------------------


def level_accuracy(ctx: Context, name: str) -> np.ndarray:
  """Accuracy [K, L] under level attack ``name`` (``attacks.LEVEL_ATTACKS``) at its 10 levels."""
  attack = attacks_lib.LEVEL_ATTACKS[name]
  levels = jnp.asarray(attacks_lib.attack_levels(ctx.run.config.dataset, name))
  if not attack.needs_source:
    def correct(logits_fn, key, x, y, m, shared):
      del shared
      return attacks_lib.correct_per_level(logits_fn, attack, key, x, y, levels, None, m)
    return np.asarray(sweep(ctx, correct, ctx.key_for(name)))
  lo, hi = attacks_lib.batch_range(_unit(ctx.run, ctx.images), offset=ctx.first_image)
  source = ctx.source

  def correct_fgsm(logits_fn, key, x, y, m, lo, hi, source_variables):
    sign = attacks_lib.gradient_sign(source.logits_fn(source_variables), x, y)
    return attacks_lib.correct_per_level(logits_fn, attack, key, x, y, levels, attacks_lib.FgsmAux(sign, lo, hi), m)

  return np.asarray(sweep(ctx, correct_fgsm, ctx.key_for(name), per_image=(lo, hi),
                          shared=source.seed_variables(ctx.source_seed)))


@evaluator(*attacks_lib.LEVEL_ATTACKS)
def evaluate_levels(ctx: Context, record: dict, name: str) -> None:
  if attacks_lib.LEVEL_ATTACKS[name].needs_source and ctx.source is None:
    ctx.log(f'{name} skipped: it needs --source_workdir (an unregularized run to transfer from)')
    return
  t = time.time()
  acc = level_accuracy(ctx, name)
  record['attacks'][name] = {'levels': attacks_lib.attack_levels(ctx.run.config.dataset, name).tolist(),
                             'accuracy': acc.tolist()}
  record['seconds'][name] = time.time() - t
  _curve_log(ctx, name, acc, record['seconds'][name])


# -- white-box PGD ---------------------------------------------------------------------------


def pgd_accuracy(ctx: Context, cfg: whitebox.PgdConfig) -> tuple[np.ndarray, np.ndarray]:
  """(levels [L], accuracy [K, L]) under white-box PGD ``cfg`` on ``options.pgd_images`` images."""
  levels = whitebox.pgd_levels(ctx.run.config.dataset, cfg.norm)
  lo, hi = ctx.bounds
  images, labels = ctx.subset(ctx.options.pgd_images)

  def correct(logits_fn, key, x, y, m, shared):
    del shared
    return whitebox.correct_under_pgd(logits_fn, key, x, y, jnp.asarray(levels), lo, hi, cfg, m)

  return levels, np.asarray(sweep(ctx, correct, ctx.key_for(cfg.name), images, labels))


def _evaluate_pgd(ctx: Context, record: dict, cfg: whitebox.PgdConfig) -> None:
  t = time.time()
  levels, acc = pgd_accuracy(ctx, cfg)
  record['attacks'][cfg.name] = {'levels': levels.tolist(), 'accuracy': acc.tolist(), 'settings': cfg.settings(),
                                 'num_images': len(ctx.subset(ctx.options.pgd_images)[0])}
  record['seconds'][cfg.name] = time.time() - t
  _curve_log(ctx, cfg.name, acc, record['seconds'][cfg.name])


@evaluator(*whitebox.PGD_VARIANTS)
def evaluate_pgd(ctx: Context, record: dict, name: str) -> None:
  _evaluate_pgd(ctx, record, whitebox.PGD_VARIANTS[name])


@evaluator('pgd')
def evaluate_all_pgd(ctx: Context, record: dict, name: str) -> None:
  del name
  for cfg in whitebox.PGD_VARIANTS.values():
    if cfg.name not in record['attacks']:
      _evaluate_pgd(ctx, record, cfg)


# -- common corruptions --------------------------------------------------------------------


@evaluator('corruptions')
def evaluate_corruptions(ctx: Context, record: dict, name: str) -> None:
  """Every corruption of the dataset family (CIFAR-10-C set or MNIST-C) at each of its severities."""
  del name
  variant = corruptions_lib.FAMILY_VARIANT[ctx.run.family]
  images, labels = ctx.subset(ctx.options.corruption_images)
  out = {'variant': variant, 'num_images': len(images), 'severities': {}, 'accuracy': {}}
  t_all = time.time()
  for c in ctx.options.corruptions or corruptions_lib.FAMILY_CORRUPTIONS[ctx.run.family]:
    t = time.time()

    def correct(logits_fn, key, x, y, m, shared, c=c):
      del shared
      return corruptions_lib.correct_per_severity(logits_fn, key, x, y, c, variant, m)

    acc = np.asarray(sweep(ctx, correct, corruptions_lib.corruption_key(ctx.key_for('corruptions'), c),
                           images, labels))
    out['severities'][c] = corruptions_lib.severities(c, variant)
    out['accuracy'][c] = acc.tolist()
    _curve_log(ctx, f'corruption {c}', acc, time.time() - t)
  record['corruptions'] = out
  record['seconds']['corruptions'] = time.time() - t_all


# -- the Boundary attack -------------------------------------------------------------------


def boundary_eval(ctx: Context, images: np.ndarray) -> dict:
  """The Boundary attack on every seed: per repeat, the median over successful images of ‖δ‖²/D;
  the score is the mean over repeats (``attacks.boundary.release_score``)."""
  o, run = ctx.options, ctx.run
  (xb,), mb = pipe.pad_to_batches(o.boundary_batch, images)
  lo, hi = ctx.bounds

  @jax.jit
  def attack(variables, k, x_u8):
    x = run.model_input(x_u8)
    logits_fn = run.logits_fn(variables)
    predict = lambda z: jnp.argmax(logits_fn(z), -1)  # noqa: E731
    out = attacks_lib.boundary_attack(predict, k, x, predict(x), o.boundary, bounds=(lo, hi))
    return {k: out[k] for k in ('distance', 'success', 'no_start')}

  real = mb.reshape(-1) > 0
  per_seed = []
  key = ctx.key_for('boundary')
  for s in range(run.num_seeds):
    v = run.seed_variables(s)
    reps = []
    for r in range(o.boundary_repeats):
      outs = [jax.device_get(attack(v, jax.random.fold_in(jax.random.fold_in(key, r), i), xb[i]))
              for i in range(xb.shape[0])]
      reps.append({k: np.concatenate([o_[k] for o_ in outs])[real] for k in outs[0]})
    per_seed.append(attacks_lib.boundary.release_score(
        np.stack([r['distance'] for r in reps]), np.stack([r['success'] for r in reps]),
        np.stack([r['no_start'] for r in reps])))
  cfg = o.boundary
  return {'protocol': cfg.protocol, 'steps': cfg.steps, 'repeats': o.boundary_repeats,
          'num_images': int(len(images)), 'bounds': [float(lo), float(hi)],
          'distance': '‖(x̃ − x)/(max − min)‖² / (H·W·C), median over successful images, mean over repeats',
          'score': [r['score'] for r in per_seed],
          'median_per_repeat': [r['median_per_repeat'] for r in per_seed],
          'no_start': [r['no_start'] for r in per_seed],
          'not_adversarial': [r['not_adversarial'] for r in per_seed],
          'successful': [r['successful'] for r in per_seed]}


@evaluator('boundary')
def evaluate_boundary(ctx: Context, record: dict, name: str) -> None:
  del name
  t = time.time()
  rng = np.random.default_rng(ctx.seed)   # the release: random.sample of 1000 test images
  pick = np.sort(rng.choice(len(ctx.images), min(ctx.options.boundary_images, len(ctx.images)), replace=False))
  b = boundary_eval(ctx, ctx.images[pick])
  record['boundary'] = b
  record['seconds']['boundary'] = time.time() - t
  ctx.log(f'boundary ({b["protocol"]} protocol, {b["num_images"]} images × {b["repeats"]} repeats × '
          f'{b["steps"]} steps): score {", ".join(f"{s:.4g}" for s in b["score"])}; no start on '
          f'{b["no_start"]} images per repeat, in {record["seconds"]["boundary"]:.1f}s')


# ---------------------------------------------------------------------------------------
# Running a list of evaluators on a run directory.
# ---------------------------------------------------------------------------------------


def _unit(run: rundir.Run, images: np.ndarray, chunk: int = 2000) -> np.ndarray:
  """uint8 native images -> float32 [0, 1] input space (host array), in chunks."""
  fn = jax.jit(run.model_input)
  return np.concatenate([np.asarray(fn(images[i:i + chunk])) for i in range(0, len(images), chunk)])


def test_set_bounds(run: rundir.Run, images: np.ndarray) -> tuple[float, float]:
  """(min, max) over the whole test set in [0, 1] input space: the release's Boundary bounds."""
  x = _unit(run, images)
  return float(x.min()), float(x.max())


def evaluate_run(workdir: str, attack_names: list[str], source_workdir: Optional[str] = None,
                 source_seed_index: int = 0, num_images: int = 0, batch_size: int = 500, seed: int = 0,
                 first_image: int = 0, options: Options = Options(),
                 log: Optional[Callable[[str], None]] = None) -> dict:
  """Evaluates every seed of a run against the named evaluators; returns the robustness record."""
  log = log or logging.info
  unknown = [a for a in attack_names if a not in EVALUATORS]
  if unknown:
    raise ConfigError(f'unknown attack(s) {unknown}; choose from {names()}')
  run = rundir.load_run(workdir, log=log)
  dataset = run.config.dataset
  source = None
  if any(attacks_lib.LEVEL_ATTACKS.get(a) and attacks_lib.LEVEL_ATTACKS[a].needs_source for a in attack_names) \
     and source_workdir:
    source = rundir.load_run(source_workdir, log=log)
    if source.config.dataset != dataset:
      raise ConfigError(f'--source_workdir was trained on {source.config.dataset}, not {dataset}')
    if not 0 <= source_seed_index < source.num_seeds:
      raise ConfigError(f'--source_seed_index={source_seed_index} but the source has {source.num_seeds} seed(s)')
  all_images, all_labels = data_lib.load_split(dataset, 'test', run.config.data_dir, download=run.config.download)
  total = len(all_images)
  end = first_image + num_images if num_images else total
  images, labels = all_images[first_image:end], all_labels[first_image:end]
  if not len(images):
    raise ConfigError(f'no test images in [{first_image}, {end}); the test set has {total}')
  ctx = Context(run, images, labels, first_image, test_set_bounds(run, all_images), jax.random.PRNGKey(seed), seed,
                batch_size, source, source_seed_index, options, log)
  record = {'workdir': os.path.abspath(workdir), 'dataset': dataset, 'seeds': run.seeds,
            'alpha': run.config.reg.alpha, 'threshold': run.config.reg.threshold,
            'reg_dataset': run.config.reg.dataset, 'num_images': int(len(images)), 'first_image': first_image,
            'num_classes': data_lib.get_info(dataset).num_classes,
            'source_workdir': os.path.abspath(source_workdir) if source else None,
            'checkpoint': run.checkpoint_record, 'source_checkpoint': source.checkpoint_record if source else None,
            'attacks': {}, 'seconds': {}}
  for name in dict.fromkeys(attack_names):   # each once, in the given order
    EVALUATORS[name](ctx, record, name)
  record['clean_accuracy'] = [float(a) for a in np.asarray(
      sweep(ctx, lambda logits_fn, key, x, y, m, shared: jnp.sum((jnp.argmax(logits_fn(x), -1) == y) * m),
            ctx.key))]
  if masking.pgd_attacks(record):
    record['gradient_masking_checks'] = masking.gradient_masking_checks(record)
  return record


def summary(record: dict) -> dict:
  """One line: clean accuracy and the mean accuracy over levels of each attack, seed-averaged."""
  out = {'workdir': record['workdir'], 'num_images': record['num_images']}
  if 'clean_accuracy' in record:
    out['clean_accuracy'] = float(np.mean(record['clean_accuracy']))
  for name, r in record['attacks'].items():
    out[f'{name}_mean_accuracy'] = float(np.mean(r['accuracy']))
  if 'boundary' in record:
    out['boundary_score'] = float(np.mean(record['boundary']['score']))
  if 'corruptions' in record:
    out['corruptions_mean_accuracy'] = float(np.mean([np.mean(a) for a in record['corruptions']['accuracy'].values()]))
  if 'gradient_masking_checks' in record:
    out['gradient_masking_checks_failed'] = [c['check'] for c in record['gradient_masking_checks'] if not c['passed']]
  return out


def main(argv):
  del argv
  options = Options(attacks_lib.BoundaryConfig(protocol=FLAGS.boundary_protocol, steps=FLAGS.boundary_steps),
                    FLAGS.boundary_images, FLAGS.boundary_repeats, FLAGS.boundary_batch, FLAGS.pgd_images,
                    FLAGS.corruption_images, tuple(FLAGS.corruptions))
  record = evaluate_run(FLAGS.workdir, FLAGS.attacks, FLAGS.source_workdir, FLAGS.source_seed_index,
                        FLAGS.num_images, FLAGS.batch_size, FLAGS.seed, FLAGS.first_image, options)
  out = FLAGS.output or os.path.join(FLAGS.workdir, 'robustness.json')
  tmp = out + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, out)
  print(json.dumps({**summary(record), 'output': out}), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
