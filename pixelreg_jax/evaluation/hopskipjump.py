"""The decision-based HopSkipJump attack (``attacks.hopskipjump``), result kind 'decision_distance'.

Two evaluators, one per norm: ``hopskipjump`` (L2) and ``hopskipjump_linf`` (L∞). Both read
``settings.hopskipjump``: ``images`` random test images (chosen by ``settings.seed`` exactly as the
Boundary images are, so equal counts attack the same images), ``budgets`` (comma-separated query
budgets), ``batch`` (images per compiled attack), ``init_tries`` (uniform draws for a start),
``eval_chunk`` (gradient directions per image in one model call: memory only). The label moved away
from is the model's own prediction; the box is the whole test set's range (``ctx.bounds``).

Per seed and budget: the median, over the images with an adversarial example found within that
many queries (and predicted adversarial again at the end), of its distance in [0, 1] units —
‖(x̃ − x)/(max − min)‖₂/√(H·W·C) (L2: the RMS pixel change) or ‖(x̃ − x)/(max − min)‖∞ (L∞);
higher = more robust. A result: ``{'kind': 'decision_distance', 'attack', 'norm', 'budgets': [NB],
'num_images', 'bounds', 'distance', 'median': [K][NB] (null: no success), 'successful',
'not_adversarial': [K][NB], 'no_start': [K], 'mean_queries': [K] (queries used per attacked image),
'seconds'}``. A model's runs pool by concatenating the seeds (same attack, norm and budgets
required); summary.json shows per budget the mean ± SEM of the seeds' medians (undefined if a seed
has none) and the image counts summed over seeds.
"""
from __future__ import annotations

import time

import ml_collections
import numpy as np

from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax.attacks import hopskipjump as hsj
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation.context import Context, decision_attack, over_batches

KIND = 'decision_distance'
NORM_OF = {'hopskipjump': 'l2', 'hopskipjump_linf': 'linf'}
_COUNTS = ('successful', 'not_adversarial')
_DISTANCE = {'l2': '‖(x̃ − x)/(max − min)‖₂ / √(H·W·C)', 'linf': '‖(x̃ − x)/(max − min)‖∞'}


def budgets(settings: ml_collections.ConfigDict) -> tuple[int, ...]:
  """``hopskipjump.budgets`` ('1000,5000,25000') as increasing ints; ConfigError in one line."""
  text = str(settings.hopskipjump.budgets)
  try:
    values = tuple(int(v) for v in text.split(',') if v.strip())
  except ValueError:
    values = ()
  if not values or min(values) < 1 or list(values) != sorted(set(values)):
    raise ConfigError(f'eval.hopskipjump.budgets={text!r}: give increasing positive query counts, e.g. 1000,5000,25000')
  return values


def check_settings(settings: ml_collections.ConfigDict, run_config=None) -> None:
  """The ``hopskipjump`` group: counts at least 1 and the budgets (ConfigError in one line)."""
  del run_config
  h = settings.hopskipjump
  for field in ('images', 'batch', 'init_tries', 'eval_chunk'):
    v = h[field]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ConfigError(f'eval.hopskipjump.{field}={v!r}: must be an integer of at least 1')
  budgets(settings)


def attack_config(settings: ml_collections.ConfigDict, norm: str) -> hsj.HopSkipJumpConfig:
  h = settings.hopskipjump
  return hsj.HopSkipJumpConfig(norm=norm, budgets=budgets(settings), init_tries=h.init_tries,
                               eval_chunk=h.eval_chunk)


def hopskipjump_eval(ctx: Context, images: np.ndarray, name: str) -> dict:
  """HopSkipJump (norm by ``name``) on every seed of ``images`` [N, H, W, C] (uint8): per seed and
  budget the median distance over successful images and the image counts."""
  h, run = ctx.settings.hopskipjump, ctx.run
  cfg = attack_config(ctx.settings, NORM_OF[name])
  (xb,), mb = pipe.pad_to_batches(h.batch, images)
  lo, hi = ctx.bounds
  attack = decision_attack(ctx, lambda predict, k, x, labels, bounds: hsj.hopskipjump(
      predict, k, x, labels, cfg, bounds=bounds), ('distance', 'success', 'not_adversarial', 'no_start', 'queries'))
  key = ctx.key_for(name)
  per_seed = []
  for s in range(run.num_seeds):
    o = over_batches(attack, run.seed_variables(s), key, xb, mb)   # [NB, N] or [N]
    started = ~o['no_start']
    per_seed.append({'median': hsj.median_at_budgets(o['distance'], o['success']),
                     'successful': o['success'].sum(1).tolist(),
                     'not_adversarial': o['not_adversarial'].sum(1).tolist(),
                     'no_start': int(o['no_start'].sum()),
                     'mean_queries': float(o['queries'][started].mean()) if started.any() else None})
  return {'kind': KIND, 'attack': 'hopskipjump', 'norm': cfg.norm, 'budgets': list(cfg.budgets),
          'num_images': int(len(images)), 'bounds': [float(lo), float(hi)],
          'distance': f'{_DISTANCE[cfg.norm]} of the closest adversarial example found within each budget, '
                      'median over successful images',
          **{k: [r[k] for r in per_seed] for k in ('median', *_COUNTS, 'no_start', 'mean_queries')}}


@registry.evaluator(*NORM_OF, check=check_settings, uses=('settings.hopskipjump',))
def evaluate_hopskipjump(ctx: Context, record: dict, name: str) -> None:
  t = time.time()
  rng = np.random.default_rng(ctx.settings.seed)   # the same images as the Boundary attack's
  n = min(ctx.settings.hopskipjump.images, len(ctx.images))
  pick = np.sort(rng.choice(len(ctx.images), n, replace=False))
  r = hopskipjump_eval(ctx, ctx.images[pick], name)
  r['seconds'] = time.time() - t
  record['results'][name] = r
  medians = ', '.join('/'.join('–' if m is None else f'{m:.4g}' for m in seed) for seed in r['median'])
  ctx.log(f'{name} ({r["norm"]}, {r["num_images"]} images, budgets {r["budgets"]}): median distance per budget '
          f'{medians} (per seed); no start on {"/".join(map(str, r["no_start"]))} images (per seed), in '
          f'{r["seconds"]:.1f}s')


# -- the kind ------------------------------------------------------------------------------------


def summary(name: str, result: dict) -> dict:
  """``<name>_median_<budget>``: the seed-mean median per budget (None where a seed has none)."""
  out = {}
  for j, b in enumerate(result['budgets']):
    vals = [m[j] for m in result['median']]
    out[f'{name}_median_{b}'] = None if any(v is None for v in vals) else float(np.mean(vals))
  return out


def pool(label: str, name: str, results: list[dict]) -> dict:
  """Per-seed lists concatenated; 'images_per_seed' [K] the images each seed was attacked on."""
  out = {'kind': KIND, **{k: registry.agree(label, f'the {name} {k}', [r.get(k) for r in results])
                         for k in ('attack', 'norm', 'budgets')}}
  out['num_images'] = registry.one_or_all([r['num_images'] for r in results])
  out['images_per_seed'] = [r['num_images'] for r in results for _ in r['median']]
  for k in ('median', *_COUNTS, 'no_start', 'mean_queries'):
    if all(k in r for r in results):
      out[k] = registry.seeds_concatenated(results, k)
  return out


def check_result(where: str, result: dict, seeds: int) -> None:
  """Attack, norm, budgets, images; the medians [K][NB] (null: undefined) and the counts."""
  registry.check_fields(result, where, attack=str, norm=str, budgets=list, num_images=int)
  nb = len(result['budgets'])
  registry.check_array(result['budgets'], (nb,), f'{where}.budgets')
  registry.check_array(result.get('median'), (seeds, nb), f'{where}.median', allow_none=True)
  for k in _COUNTS:
    registry.check_array(result.get(k), (seeds, nb), f'{where}.{k}')
  registry.check_array(result.get('no_start'), (seeds,), f'{where}.no_start')


def aggregate(name: str, model: registry.Model) -> None:
  """``entry[name]``: per budget the mean ± SEM of the seeds' medians (None where a seed has none),
  and the image counts summed over seeds (``'attacked'`` = images summed over seeds)."""
  r = model.pooled['results'][name]
  med = np.array([[np.nan if v is None else v for v in m] for m in r['median']], np.float64)   # [K, NB]
  out = {k: r[k] for k in ('attack', 'norm', 'budgets', 'num_images')}
  out['median'] = [registry.mean_sem(col) if np.isfinite(col).all() else {'mean': None, 'sem': None}
                   for col in med.T]
  out['median_per_seed'] = [[None if np.isnan(v) else float(v) for v in row] for row in med]
  out['attacked'] = int(sum(r['images_per_seed']))
  for k in _COUNTS:
    out[k] = np.sum(r[k], axis=0).astype(int).tolist()       # [NB]
  out['no_start'] = int(np.sum(r['no_start']))
  model.entry[name] = out


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, pool=pool, check=check_result))
