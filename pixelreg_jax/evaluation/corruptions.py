"""Common corruptions (the CIFAR-10-C set) or MNIST-C (``attacks.corruptions``), result kind 'corruptions'.

Every corruption of the dataset family (or ``settings.corruptions.names``) at each of its
severities, on ``settings.corruptions.images`` images. A result: ``{'kind': 'corruptions',
'variant', 'num_images', 'severities': {c: [S]}, 'accuracy': {c: [K][S]}, 'seconds'}``. A model's
runs pool by concatenating the seeds of the corruptions all runs have (same variant and
severities required); summary.json shows per corruption the mean over severities per seed, then
mean ± SEM over seeds, and against the baseline model the corruption errors of Hendrycks &
Dietterich: CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} (E = 1 − the seed-mean accuracy at severity s),
mCE = mean_c CE_c, and the relative CE and mCE with each model's clean error subtracted.
"""
from __future__ import annotations

import time

import ml_collections
import numpy as np

from pixelreg_jax import data as data_lib
from pixelreg_jax.attacks import corruptions as corruptions_lib
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation.context import Context, log_curve, sweep
from pixelreg_jax.evaluation.settings import corruption_names

KIND = 'corruptions'


def check(settings: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Every corruption named in the settings exists for the run's dataset family (before any data load)."""
  variant = corruptions_lib.FAMILY_VARIANT[data_lib.get_info(config.dataset).family]
  for c in corruption_names(settings):
    try:
      corruptions_lib.severities(c, variant)
    except ConfigError as e:
      raise ConfigError(f'eval.corruptions.names: {e}') from None


@registry.evaluator('corruptions', check=check, uses=('settings.corruptions',))
def evaluate_corruptions(ctx: Context, record: dict, name: str) -> None:
  variant = corruptions_lib.FAMILY_VARIANT[ctx.run.family]
  images, labels = ctx.subset(ctx.settings.corruptions.images)
  out = {'kind': KIND, 'variant': variant, 'num_images': len(images), 'severities': {}, 'accuracy': {}}
  t_all = time.time()
  for c in corruption_names(ctx.settings) or corruptions_lib.FAMILY_CORRUPTIONS[ctx.run.family]:
    t = time.time()

    def correct(logits_fn, key, x, y, m, shared, c=c):
      del shared
      return corruptions_lib.correct_per_severity(logits_fn, key, x, y, c, variant, m)

    acc = np.asarray(sweep(ctx, correct, corruptions_lib.corruption_key(ctx.key_for('corruptions'), c),
                           images, labels))
    out['severities'][c] = corruptions_lib.severities(c, variant)
    out['accuracy'][c] = acc.tolist()
    log_curve(ctx, f'corruption {c}', acc, time.time() - t)
  out['seconds'] = time.time() - t_all
  record['results'][name] = out


# -- the kind ------------------------------------------------------------------------------------


def summary(name: str, result: dict) -> dict:
  return {f'{name}_mean_accuracy': float(np.mean([np.mean(a) for a in result['accuracy'].values()]))}


def pool(label: str, name: str, results: list[dict]) -> dict:
  names = [c for c in results[0]['accuracy'] if all(c in r['accuracy'] for r in results)]
  return {'kind': KIND, 'variant': registry.agree(label, 'the corruption variant', [r['variant'] for r in results]),
          'num_images': registry.one_or_all([r.get('num_images') for r in results]),
          'severities': {c: registry.agree(label, f'the severities of {c}', [r['severities'][c] for r in results])
                         for c in names},
          'accuracy': {c: [row for r in results for row in r['accuracy'][c]] for c in names}}


def check_result(where: str, result: dict, seeds: int) -> None:
  """The variant, the image count, and per corruption its severities [S] and accuracy [K][S]."""
  registry.check_fields(result, where, variant=str, num_images=int, severities=dict, accuracy=dict)
  for c, acc in result['accuracy'].items():
    registry.check_array(result['severities'].get(c), (None,), f'{where}.severities.{c}')
    registry.check_array(acc, (seeds, len(result['severities'][c])), f'{where}.accuracy.{c}')


def aggregate(name: str, model: registry.Model) -> None:
  """``entry[name]``: per corruption the mean over severities per seed, then mean ± SEM over seeds
  (and per severity); 'mean_accuracy' over the corruptions."""
  c = model.pooled['results'][name]
  acc = {n: np.atleast_2d(np.asarray(a, np.float64)) for n, a in c['accuracy'].items()}   # [K, S]
  out = {k: c[k] for k in ('variant', 'num_images', 'severities')}
  out['accuracy'] = {n: {**registry.mean_sem(a.mean(1)), 'per_severity': registry.mean_sem(a)} for n, a in acc.items()}
  if acc:
    out['mean_accuracy'] = registry.mean_sem(np.mean([a.mean(1) for a in acc.values()], axis=0))
  model.entry[name] = out


def compare(name: str, model: registry.Model, baseline: registry.Model) -> None:
  """``entry[name]['errors']``: CE_c, mCE and (with clean accuracies) the relative ones against the baseline."""
  c, bc = model.pooled['results'][name], baseline.pooled['results'][name]
  out = {'baseline': baseline.label}
  if c['variant'] != bc['variant']:
    out['note'] = f'not compared: the baseline was evaluated on {bc["variant"]}'
  else:
    names = [n for n in c['accuracy'] if n in bc['accuracy'] and c['severities'][n] == bc['severities'][n]]
    if not names:
      out['note'] = 'not compared: no corruption in common with the baseline'
    else:
      errors = corruptions_lib.mean_errors({n: c['accuracy'][n] for n in names})
      base_errors = corruptions_lib.mean_errors({n: bc['accuracy'][n] for n in names})
      out.update(compared=names, ce=corruptions_lib.corruption_errors(errors, base_errors),
                 mce=corruptions_lib.mean_corruption_error(errors, base_errors))
      entry, base = model.entry, baseline.entry
      if 'clean_accuracy' in entry and 'clean_accuracy' in base:
        clean = 1.0 - entry['clean_accuracy']['mean'], 1.0 - base['clean_accuracy']['mean']
        out['relative_ce'] = corruptions_lib.corruption_errors(errors, base_errors, *clean)
        out['relative_mce'] = corruptions_lib.mean_corruption_error(errors, base_errors, *clean)
  model.entry[name]['errors'] = out


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, pool=pool, compare=compare,
                                     check=check_result))
