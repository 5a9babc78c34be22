"""The decision-based Boundary attack (``attacks.boundary``), result kind 'boundary'.

``settings.boundary``: protocol 'release' (foolbox 3.3.4 as the release calls it; the default) or
'strong'; ``images`` random test images (chosen by ``settings.seed``, one set for every seed; with
``images_per_seed`` a set per training seed, as the release draws them), ``repeats`` repeats of
``steps`` steps; bounds = the whole test set's range. Per seed and repeat the median over the
successfully attacked images of ‖δ‖²/D; a seed's score is the mean over repeats
(``attacks.boundary.release_score``; NaN when a repeat had no success, as in the release).

A result: ``{'kind': 'boundary', 'protocol', 'steps', 'repeats', 'num_images', 'images' ('shared' or
'per_seed'), 'bounds',
'distance', 'score': [K], 'median_per_repeat': [K][R], 'no_start', 'not_adversarial',
'successful': [K][R] image counts, 'seconds'}``; for RGB models also ``'score_channel0': [K]``, the
release's statistic for them (the distance of channel 0 only, D = H·W). A model's runs pool by concatenating the seeds
(same protocol, steps, repeats and image choice required); summary.json shows the mean ± SEM of the seeds'
scores (undefined if a seed has none) and the excluded images summed over seeds and repeats.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from pixelreg_jax import attacks as attacks_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation.context import Context, decision_attack, over_batches

KIND = 'boundary'
_COUNTS = ('no_start', 'not_adversarial', 'successful')


def attack_config(ctx: Context) -> attacks_lib.BoundaryConfig:
  b = ctx.settings.boundary
  return attacks_lib.BoundaryConfig(protocol=b.protocol, steps=b.steps, init_tries=b.init_tries)


def boundary_eval(ctx: Context, images: np.ndarray) -> dict:
  """The Boundary attack on every seed of ``images`` [N, H, W, C] (uint8; or [K, N, H, W, C], a set
  per seed): per repeat, the median over successful images of ‖δ‖²/D; the score is the mean over
  repeats (``attacks.boundary.release_score``)."""
  b, run, cfg = ctx.settings.boundary, ctx.run, attack_config(ctx)
  per_seed_images = images.ndim == 5
  lo, hi = ctx.bounds
  attack = decision_attack(ctx, lambda predict, k, x, labels, bounds: attacks_lib.boundary_attack(
      predict, k, x, labels, cfg, bounds=bounds), ('distance', 'distance_channel0', 'success', 'no_start'))
  rgb = run.config.model.channels == 3
  per_seed, channel0 = [], []
  key = ctx.key_for('boundary')
  for s in range(run.num_seeds):
    v = run.seed_variables(s)
    (xb,), mb = pipe.pad_to_batches(b.batch, images[s] if per_seed_images else images)
    reps = []
    for r in range(b.repeats):
      reps.append(over_batches(attack, v, jax.random.fold_in(key, r), xb, mb))
    success, no_start = np.stack([r['success'] for r in reps]), np.stack([r['no_start'] for r in reps])
    per_seed.append(attacks_lib.boundary.release_score(np.stack([r['distance'] for r in reps]), success, no_start))
    if rgb:
      channel0.append(attacks_lib.boundary.release_score(np.stack([r['distance_channel0'] for r in reps]),
                                                         success, no_start)['score'])
  out = {'kind': KIND, 'protocol': cfg.protocol, 'steps': cfg.steps, 'repeats': b.repeats,
         'num_images': int(images.shape[-4]), 'images': 'per_seed' if per_seed_images else 'shared',
         'bounds': [float(lo), float(hi)],
         'distance': '‖(x̃ − x)/(max − min)‖² / (H·W·C), median over successful images, mean over repeats',
         **{k: [r[k] for r in per_seed] for k in ('score', 'median_per_repeat', *_COUNTS)}}
  if rgb:   # the release's statistic for RGB models: channel 0 only, D = H·W
    out['score_channel0'] = channel0
  return out


def boundary_images(ctx: Context) -> np.ndarray:
  """Indices of the attacked test images: [N] drawn from ``settings.seed`` (every seed attacks the
  same), or with ``boundary.images_per_seed`` [K, N], seed k's drawn from (``settings.seed``, its
  training seed), as the release draws 1000 images anew for each training seed."""
  n = min(ctx.settings.boundary.images, len(ctx.images))
  if not ctx.settings.boundary.images_per_seed:
    return np.sort(np.random.default_rng(ctx.settings.seed).choice(len(ctx.images), n, replace=False))
  return np.stack([np.sort(np.random.default_rng([ctx.settings.seed, int(seed)]).choice(len(ctx.images), n,
                                                                                         replace=False))
                   for seed in ctx.run.seeds])


@registry.evaluator('boundary', uses=('settings.boundary',))
def evaluate_boundary(ctx: Context, record: dict, name: str) -> None:
  t = time.time()
  b = boundary_eval(ctx, ctx.images[boundary_images(ctx)])
  b['seconds'] = time.time() - t
  record['results'][name] = b
  ctx.log(f'boundary ({b["protocol"]} protocol, {b["num_images"]} images × {b["repeats"]} repeats × '
          f'{b["steps"]} steps): score {", ".join(f"{s:.4g}" for s in b["score"])}; no start on '
          f'{b["no_start"]} images per repeat, in {b["seconds"]:.1f}s')


# -- the kind ------------------------------------------------------------------------------------


def summary(name: str, result: dict) -> dict:
  return {f'{name}_score': float(np.mean(result['score']))}


def pool(label: str, name: str, results: list[dict]) -> dict:
  """Per-seed lists concatenated; 'images_per_seed' [K] the images each seed was attacked on."""
  out = {'kind': KIND, **{k: registry.agree(label, f'the Boundary {k}', [r.get(k) for r in results])
                         for k in ('protocol', 'steps', 'repeats')}}
  out['images'] = registry.agree(label, 'the Boundary images (shared or per seed)',
                                 [r.get('images', 'shared') for r in results])
  out['num_images'] = registry.one_or_all([r['num_images'] for r in results])
  out['images_per_seed'] = [r['num_images'] for r in results for _ in r['score']]
  for k in ('score', 'score_channel0', 'median_per_repeat', *_COUNTS):
    if all(k in r for r in results):
      out[k] = registry.seeds_concatenated(results, k)
  return out


def check_result(where: str, result: dict, seeds: int) -> None:
  """Protocol, steps, repeats, images; the score [K] (null: undefined) and the per-repeat lists [K][R]."""
  registry.check_fields(result, where, protocol=str, steps=int, repeats=int, num_images=int)
  registry.check_array(result.get('score'), (seeds,), f'{where}.score', allow_none=True)
  if 'score_channel0' in result:
    registry.check_array(result['score_channel0'], (seeds,), f'{where}.score_channel0', allow_none=True)
  for k in ('median_per_repeat', *_COUNTS):
    if k in result:
      registry.check_array(result[k], (seeds, result['repeats']), f'{where}.{k}', allow_none=k == 'median_per_repeat')


def aggregate(name: str, model: registry.Model) -> None:
  """``entry[name]``: mean ± SEM of the per-seed scores, and the excluded images summed over seeds
  and repeats (``'attacked'`` = images × repeats × seeds)."""
  b = model.pooled['results'][name]
  scores = np.asarray(b['score'], np.float64)   # [K]
  defined = np.isfinite(scores)
  out = {k: b[k] for k in ('protocol', 'steps', 'repeats', 'num_images')}
  out['score'] = registry.mean_sem(scores) if defined.all() else {'mean': None, 'sem': None}
  out['score_per_seed'] = scores.tolist()
  out['seeds_without_score'] = int((~defined).sum())
  if 'score_channel0' in b:
    c0 = np.asarray(b['score_channel0'], np.float64)
    out['score_channel0'] = registry.mean_sem(c0) if np.isfinite(c0).all() else {'mean': None, 'sem': None}
  out['attacked'] = int(b['repeats'] * sum(b['images_per_seed']))
  for k in _COUNTS:
    if k in b:
      per_seed = [int(np.sum(v)) for v in b[k]]   # each seed: [R] counts
      out[k], out[f'{k}_per_seed'] = int(sum(per_seed)), per_seed
  model.entry[name] = out


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, pool=pool, check=check_result))
