"""Running a list of evaluators on a run directory: the evaluation record and its one-line summary."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from pixelreg_jax import attacks as attacks_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import rundir
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation import settings as settings_lib
from pixelreg_jax.evaluation.context import Context, clean_accuracy, test_set_bounds

FORMAT = 2   # record['format']; records without it are of the first format (report upgrades them)


def evaluate_run(workdir: str, attacks: Sequence[str], settings: ml_collections.ConfigDict,
                 source_workdir: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> dict:
  """Evaluates every seed of the run in ``workdir`` with the named evaluators; returns the record.

  ``settings``: ``settings.evaluation_config()`` with any changes. The names, the settings and the
  run's config are checked before any checkpoint, data or program is loaded (ConfigError).
  """
  log = log or logging.info
  unknown = [a for a in attacks if a not in registry.EVALUATORS]
  if unknown:
    raise ConfigError(f'unknown attack(s) {unknown}; choose from {registry.names()}')
  settings_lib.validate(settings)
  names = list(dict.fromkeys(attacks))   # each once, in the given order
  config = rundir.load_config(workdir)
  for name in names:
    if name in registry.CHECKS:
      registry.CHECKS[name](settings, config)
  run = rundir.load_run(workdir, log=log)
  dataset = run.config.dataset
  source = None
  if source_workdir and any(attacks_lib.LEVEL_ATTACKS.get(a) and attacks_lib.LEVEL_ATTACKS[a].needs_source
                            for a in names):
    source = rundir.load_run(source_workdir, log=log)
    if source.config.dataset != dataset:
      raise ConfigError(f'--source_workdir was trained on {source.config.dataset}, not {dataset}')
    if settings.source_seed_index >= source.num_seeds:
      raise ConfigError(f'--eval.source_seed_index={settings.source_seed_index} but the source has '
                        f'{source.num_seeds} seed(s)')
  all_images, all_labels = data_lib.load_split(dataset, 'test', run.config.data_dir, download=run.config.download)
  first, total = settings.first_image, len(all_images)
  end = first + settings.num_images if settings.num_images else total
  images, labels = all_images[first:end], all_labels[first:end]
  if not len(images):
    raise ConfigError(f'no test images in [{first}, {end}); the test set has {total}')
  ctx = Context(run, images, labels, first, test_set_bounds(run, all_images), jax.random.PRNGKey(settings.seed),
                settings, source, log)
  record = {'format': FORMAT, 'workdir': os.path.abspath(workdir), 'dataset': dataset, 'seeds': run.seeds,
            'alpha': run.config.reg.alpha, 'threshold': run.config.reg.threshold,
            'reg_dataset': run.config.reg.dataset, 'num_classes': data_lib.get_info(dataset).num_classes,
            'num_images': int(len(images)), 'first_image': first, 'checkpoint': run.checkpoint_record,
            'source_workdir': os.path.abspath(source_workdir) if source else None,
            'source_checkpoint': source.checkpoint_record if source else None,
            'settings': settings.to_dict(), 'evaluators': names, 'results': {}}
  for name in names:
    registry.EVALUATORS[name](ctx, record, name)
  record['clean_accuracy'] = clean_accuracy(ctx)
  for kind in registry.KINDS.values():
    result = kind.derive(record) if kind.derive else None
    if result is not None:
      record['results'][kind.name] = result
  return record


def summary(record: dict) -> dict:
  """One line: clean accuracy and each result's summary (e.g. the mean accuracy over the levels of
  a curve, the Boundary score, the failed gradient-masking checks), seed-averaged."""
  out = {'workdir': record['workdir'], 'num_images': record['num_images']}
  if 'clean_accuracy' in record:
    out['clean_accuracy'] = float(np.mean(record['clean_accuracy']))
  for name, result in record['results'].items():
    out.update(registry.kind_of(result, name).summary(name, result))
  return out
