"""Accuracy curves: the paper's level sweeps and white-box PGD (results of kind 'curve').

  gaussian, uniform, salt_pepper, fgsm   the paper's 10-level sweeps (``attacks.levels``); FGSM
                                         transfers the gradient of the unregularized model in
                                         ``--source_workdir`` and scales by the release's 64-image
                                         test batches; skipped without a source
  pgd_linf, pgd_l2, pgd_linf_steps40, …  white-box PGD (``attacks.whitebox.PGD_VARIANTS``) on
                                         ``settings.pgd.images`` images
  pgd                                    every PGD variant

A result: ``{'kind': 'curve', 'levels': [L], 'accuracy': [K][L], 'seconds'}``, for PGD also
``'settings'`` (``PgdConfig.settings()``, with the norm) and ``'num_images'``. A model's runs pool
by concatenating the seeds' rows (same levels and PGD settings required); summary.json shows the
mean ± SEM over seeds at each level (``entry['attacks'][name]``).
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from pixelreg_jax import attacks as attacks_lib
from pixelreg_jax.attacks import whitebox
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation.context import Context, log_curve, sweep, unit_images

KIND = 'curve'


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
  lo, hi = attacks_lib.batch_range(unit_images(ctx.run, ctx.images), offset=ctx.first_image)
  source = ctx.source

  def correct_fgsm(logits_fn, key, x, y, m, lo, hi, source_variables):
    sign = attacks_lib.gradient_sign(source.logits_fn(source_variables), x, y)
    return attacks_lib.correct_per_level(logits_fn, attack, key, x, y, levels, attacks_lib.FgsmAux(sign, lo, hi), m)

  return np.asarray(sweep(ctx, correct_fgsm, ctx.key_for(name), per_image=(lo, hi),
                          shared=source.seed_variables(ctx.settings.source_seed_index)))


def _add(ctx: Context, record: dict, name: str, levels, acc: np.ndarray, t: float, **extra) -> None:
  seconds = time.time() - t
  record['results'][name] = {'kind': KIND, 'levels': np.asarray(levels).tolist(), 'accuracy': acc.tolist(),
                             **extra, 'seconds': seconds}
  log_curve(ctx, name, acc, seconds)


SOURCE = ('settings.source_seed_index', 'source_workdir', 'source_checkpoint')   # what a transferred attack uses
PGD = ('settings.pgd',)


@registry.evaluator(*[a for a, attack in attacks_lib.LEVEL_ATTACKS.items() if not attack.needs_source])
@registry.evaluator(*[a for a, attack in attacks_lib.LEVEL_ATTACKS.items() if attack.needs_source], uses=SOURCE)
def evaluate_levels(ctx: Context, record: dict, name: str) -> None:
  if attacks_lib.LEVEL_ATTACKS[name].needs_source and ctx.source is None:
    ctx.log(f'{name} skipped: it needs --source_workdir (an unregularized run to transfer from)')
    return
  t = time.time()
  acc = level_accuracy(ctx, name)
  _add(ctx, record, name, attacks_lib.attack_levels(ctx.run.config.dataset, name), acc, t)


# -- white-box PGD ---------------------------------------------------------------------------


def pgd_accuracy(ctx: Context, cfg: whitebox.PgdConfig) -> tuple[np.ndarray, np.ndarray]:
  """(levels [L], accuracy [K, L]) under white-box PGD ``cfg`` on ``settings.pgd.images`` images."""
  levels = whitebox.pgd_levels(ctx.run.config.dataset, cfg.norm)
  lo, hi = ctx.bounds
  images, labels = ctx.subset(ctx.settings.pgd.images)

  def correct(logits_fn, key, x, y, m, shared):
    del shared
    return whitebox.correct_under_pgd(logits_fn, key, x, y, jnp.asarray(levels), lo, hi, cfg, m)

  return levels, np.asarray(sweep(ctx, correct, ctx.key_for(cfg.name), images, labels))


def _evaluate_pgd(ctx: Context, record: dict, cfg: whitebox.PgdConfig) -> None:
  t = time.time()
  levels, acc = pgd_accuracy(ctx, cfg)
  _add(ctx, record, cfg.name, levels, acc, t, settings=cfg.settings(),
       num_images=len(ctx.subset(ctx.settings.pgd.images)[0]))


@registry.evaluator(*whitebox.PGD_VARIANTS, uses=PGD)
def evaluate_pgd(ctx: Context, record: dict, name: str) -> None:
  _evaluate_pgd(ctx, record, whitebox.PGD_VARIANTS[name])


@registry.evaluator('pgd', uses=PGD)
def evaluate_all_pgd(ctx: Context, record: dict, name: str) -> None:
  del name
  for cfg in whitebox.PGD_VARIANTS.values():
    if cfg.name not in record['results']:
      _evaluate_pgd(ctx, record, cfg)


# -- the kind ------------------------------------------------------------------------------------


def summary(name: str, result: dict) -> dict:
  return {f'{name}_mean_accuracy': float(np.mean(result['accuracy']))}


def pool(label: str, name: str, results: list[dict]) -> dict:
  out = {'kind': KIND, 'levels': registry.agree(label, f'the levels of {name}', [r['levels'] for r in results],
                                                close=True),
         'accuracy': registry.seeds_concatenated(results, 'accuracy')}
  if any('settings' in r for r in results):
    out['settings'] = registry.agree(label, f'the settings of {name}', [r.get('settings') for r in results])
  if any('num_images' in r for r in results):
    out['num_images'] = registry.one_or_all([r.get('num_images') for r in results])
  return out


def check_result(where: str, result: dict, seeds: int) -> None:
  """Levels [L], accuracy [K][L]; PGD's settings a dict (with its norm, an int of steps)."""
  registry.check_array(result.get('levels'), (None,), f'{where}.levels')
  registry.check_array(result.get('accuracy'), (seeds, len(result['levels'])), f'{where}.accuracy')
  if 'settings' in result:
    registry.check_fields(result, where, settings=dict)
    if 'norm' in result['settings']:
      registry.check_fields(result['settings'], f'{where}.settings', norm=str, steps=int)


def aggregate(name: str, model: registry.Model) -> None:
  """``entry['attacks'][name]``: {'levels' [L], 'mean' [L], 'sem' [L], 'settings'? (PGD), 'num_images'?}."""
  c = model.pooled['results'][name]
  model.entry.setdefault('attacks', {})[name] = {
      'levels': c['levels'], **registry.mean_sem(c['accuracy']),
      **{k: c[k] for k in ('settings', 'num_images') if k in c}}


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, pool=pool, check=check_result))
