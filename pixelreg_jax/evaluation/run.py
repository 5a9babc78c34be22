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
from pixelreg_jax.evaluation import registry, store, workdirs
from pixelreg_jax.evaluation import settings as settings_lib
from pixelreg_jax.evaluation.context import Context, clean_accuracy, test_set_bounds

FORMAT = 2   # record['format']; records without it are of the first format (report upgrades them)


def evaluate_run(workdir: str, attacks: Sequence[str], settings: ml_collections.ConfigDict,
                 source_workdir: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                 output: Optional[str] = None, allow_unfinished: bool = False) -> dict:
  """Evaluates every seed of the run in ``workdir`` with the named evaluators; returns the record.

  ``settings``: ``settings.evaluation_config()`` with any changes. Before any checkpoint, data or
  program is loaded, the names, the settings, the run directory (one model, not being trained,
  finished unless ``allow_unfinished``: ``workdirs``), the FGSM source and, given ``output``, that
  the record can be written there (``store.check_writable``) are checked (ConfigError). Writing
  it is ``store.write(output, record)`` (merged per evaluator into the record there, under a lock).
  """
  log = log or logging.info
  unknown = [a for a in attacks if a not in registry.EVALUATORS]
  if unknown:
    raise ConfigError(f'unknown attack(s) {unknown}; choose from {registry.names()}')
  settings_lib.validate(settings)
  names = list(dict.fromkeys(attacks))   # each once, in the given order
  config = rundir.load_config(workdir)
  alpha, threshold = workdirs.one_setting(workdir, config)
  unfinished = workdirs.check_finished(workdir, config, allow_unfinished, log)
  for name in names:
    if name in registry.CHECKS:
      registry.CHECKS[name](settings, config)
  needs_source = source_workdir and any(
      attacks_lib.LEVEL_ATTACKS.get(a) and attacks_lib.LEVEL_ATTACKS[a].needs_source for a in names)
  if needs_source:
    source_config = rundir.load_config(source_workdir)
    workdirs.one_setting(source_workdir, source_config, '--source_workdir')
    workdirs.check_finished(source_workdir, source_config, allow_unfinished, log, '--source_workdir')
    workdirs.check_source(source_workdir, source_config, config, settings.source_seed_index)
  if output:
    store.check_writable(output)
  run = rundir.load_run(workdir, log=log)
  dataset = run.config.dataset
  source = rundir.load_run(source_workdir, log=log) if needs_source else None
  all_images, all_labels = data_lib.load_split(dataset, 'test', run.config.data_dir, download=run.config.download)
  first, total = settings.first_image, len(all_images)
  end = first + settings.num_images if settings.num_images else total
  images, labels = all_images[first:end], all_labels[first:end]
  if not len(images):
    raise ConfigError(f'no test images in [{first}, {end}); the test set has {total}')
  ctx = Context(run, images, labels, first, test_set_bounds(run, all_images), jax.random.PRNGKey(settings.seed),
                settings, source, log)
  checkpoint = dict(run.checkpoint_record, **({'unfinished': unfinished} if unfinished else {}))
  record = {'format': FORMAT, 'workdir': os.path.abspath(workdir), 'dataset': dataset, 'seeds': run.seeds,
            'alpha': alpha, 'threshold': threshold,
            'reg_dataset': run.config.reg.dataset, 'num_classes': data_lib.get_info(dataset).num_classes,
            'num_images': int(len(images)), 'first_image': first, 'checkpoint': checkpoint,
            'source_workdir': os.path.abspath(source_workdir) if source else None,
            'source_checkpoint': source.checkpoint_record if source else None,
            'settings': settings.to_dict(), 'evaluators': names, 'results': {}}
  for name in names:
    registry.EVALUATORS[name](ctx, record, name)
  record['clean_accuracy'] = clean_accuracy(ctx)
  return registry.add_derived(record)


def summary(record: dict) -> dict:
  """One line: clean accuracy and each result's summary (e.g. the mean accuracy over the levels of
  a curve, the Boundary score, the failed gradient-masking checks), seed-averaged."""
  out = {'workdir': record['workdir'], 'num_images': record['num_images']}
  if 'clean_accuracy' in record:
    out['clean_accuracy'] = float(np.mean(record['clean_accuracy']))
  for name, result in record['results'].items():
    out.update(registry.kind_of(result, name).summary(name, result))
  return out
