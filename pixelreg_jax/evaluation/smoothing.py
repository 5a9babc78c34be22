"""Certified L2 robustness by randomized smoothing (``attacks.smoothing``), result kind 'certified'.

Evaluator ``smoothing``: for each noise level σ of ``settings.smoothing.sigmas`` and every seed,
Cohen et al.'s ``CERTIFY`` (n0 selection and n estimation samples of N(0, σ²I) added in [0, 1]
input space, a one-sided Clopper–Pearson bound at confidence 1 − alpha) on the first
``settings.smoothing.images`` evaluated images; the certified radius of every image (null where
the smoothed classifier abstains or is wrong) and the certified accuracy at the radii
``settings.smoothing.radii`` (the fraction of images classified correctly with radius ≥ r).

A result: ``{'kind': 'certified', 'num_images', 'n0', 'n', 'alpha', 'noise', 'sigmas': [S],
'radii': [R], 'certified_accuracy': [K][S][R], 'radius': [K][S][N] (null: abstain or wrong),
'abstained': [K][S] image counts, 'seconds'}``. A model's runs pool by concatenating the seeds
(same n0, n, alpha, σ and radii required); summary.json shows per σ the mean ± SEM over seeds of
the certified-accuracy curve (``entry[name]``). The settings are checked by ``check`` (before any
data is loaded), not by ``settings.validate``.
"""
from __future__ import annotations

import math
import time

import jax
import ml_collections
import numpy as np

from pixelreg_jax.attacks import smoothing as smoothing_lib
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import registry
from pixelreg_jax.evaluation.context import Context, unit_images

KIND = 'certified'
NOISE = 'N(0, σ²I) added to the [0, 1] images at native size, not clipped; radii are L2 in that space'
_INTS = ('n0', 'n', 'batch', 'images')
_LOWER = {'n0': 1, 'n': 1, 'batch': 1, 'images': 0}


def _floats(settings: ml_collections.ConfigDict, field: str) -> list[float]:
  """``settings.smoothing.<field>``, a comma-separated string, as floats (ConfigError if one is not a
  finite number)."""
  text = str(settings.smoothing[field])
  out = []
  for part in (p.strip() for p in text.split(',')):
    try:
      v = float(part)
    except ValueError:
      raise ConfigError(f'eval.smoothing.{field}={text!r}: {part!r} is not a number; give comma-separated '
                        'numbers, e.g. 0.12,0.25,0.5') from None
    if not math.isfinite(v):
      raise ConfigError(f'eval.smoothing.{field}={text!r}: {part!r} is not finite')
    out.append(v)
  return out


def sigmas(settings: ml_collections.ConfigDict) -> list[float]:
  """The noise levels σ [S] of ``settings.smoothing.sigmas``."""
  return _floats(settings, 'sigmas')


def radii(settings: ml_collections.ConfigDict) -> list[float]:
  """The radii [R] of the certified-accuracy curve (``settings.smoothing.radii``)."""
  return _floats(settings, 'radii')


def check(settings: ml_collections.ConfigDict, config: ml_collections.ConfigDict = None) -> None:
  """Raises a one-line ConfigError for a ``settings.smoothing`` the evaluator cannot run with."""
  del config
  s = settings.smoothing
  for field in _INTS:
    v = s[field]
    if not isinstance(v, int) or isinstance(v, bool):
      raise ConfigError(f'eval.smoothing.{field}={v!r}: an integer is needed')
    if v < _LOWER[field]:
      raise ConfigError(f'eval.smoothing.{field}={v}: must be at least {_LOWER[field]}')
  a = s.alpha
  if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
    raise ConfigError(f'eval.smoothing.alpha={a!r}: must be a number in (0, 1)')
  sig = sigmas(settings)
  if any(v <= 0 for v in sig):
    raise ConfigError(f'eval.smoothing.sigmas={s.sigmas!r}: every σ must be positive')
  rad = radii(settings)
  if any(v < 0 for v in rad) or any(b <= a for a, b in zip(rad, rad[1:])):
    raise ConfigError(f'eval.smoothing.radii={s.radii!r}: radii must be non-negative and increasing')


def certify_seeds(ctx: Context, images: np.ndarray, labels: np.ndarray, key: jax.Array) -> dict:
  """``CERTIFY`` of every image [N, H, W, C] (uint8) for every seed and σ.

  Returns {'certified_accuracy': [K, S, R], 'radius': [K, S, N] (−1: abstain or wrong),
  'abstained': [K, S]} as numpy arrays. All seeds and σ see the same standard normal draws
  (image i: ``fold_in(key, i)``), σ scales them.
  """
  s, run = ctx.settings.smoothing, ctx.run
  sig, grid = sigmas(ctx.settings), radii(ctx.settings)
  x = unit_images(run, images)
  num_classes = int(jax.eval_shape(run.logits_fn(run.seed_variables(0)), x[:1]).shape[-1])
  sampler = smoothing_lib.make_sampler(lambda v, z: run.logits_fn(v)(z), num_classes, s.n0, s.n, s.batch)
  acc = np.zeros((run.num_seeds, len(sig), len(grid)))
  rad = np.full((run.num_seeds, len(sig), len(images)), -1.0)
  abstained = np.zeros((run.num_seeds, len(sig)), np.int64)
  for k in range(run.num_seeds):
    variables = run.seed_variables(k)
    for j, sigma in enumerate(sig):
      t = time.time()
      counts0, counts = smoothing_lib.sample(sampler, variables, key, x, sigma)
      c = smoothing_lib.certify(counts0, counts, sigma, s.alpha)
      rad[k, j] = smoothing_lib.correct_radius(c['prediction'], c['radius'], labels)
      acc[k, j] = smoothing_lib.certified_accuracy(rad[k, j], grid)
      abstained[k, j] = int(np.sum(c['prediction'] < 0))
      ctx.log(f'smoothing seed {k} σ={sigma:g}: certified accuracy {" ".join(f"{a:.3f}" for a in acc[k, j])} at '
              f'radii {" ".join(f"{r:g}" for r in grid)}; abstained on {abstained[k, j]} of {len(images)} '
              f'images ({s.n0} + {s.n} samples each) in {time.time() - t:.1f}s')
  return {'certified_accuracy': acc, 'radius': rad, 'abstained': abstained}


@registry.evaluator('smoothing', check=check, uses=('settings.smoothing',))
def evaluate_smoothing(ctx: Context, record: dict, name: str) -> None:
  t = time.time()
  s = ctx.settings.smoothing
  images, labels = ctx.subset(s.images)
  out = certify_seeds(ctx, images, labels, ctx.key_for(name))
  radius_lists = [[[None if r < 0 else float(r) for r in row] for row in seed] for seed in out['radius']]
  record['results'][name] = {
      'kind': KIND, 'num_images': int(len(images)), 'n0': int(s.n0), 'n': int(s.n), 'alpha': float(s.alpha),
      'noise': NOISE, 'sigmas': sigmas(ctx.settings), 'radii': radii(ctx.settings),
      'certified_accuracy': out['certified_accuracy'].tolist(), 'radius': radius_lists,
      'abstained': out['abstained'].tolist(), 'seconds': time.time() - t}


# -- the kind ------------------------------------------------------------------------------------


def summary(name: str, result: dict) -> dict:
  """The certified accuracy averaged over seeds, σ and radii."""
  return {f'{name}_mean_certified_accuracy': float(np.mean(result['certified_accuracy']))}


_SAME = ('n0', 'n', 'alpha', 'sigmas', 'radii', 'noise')


def pool(label: str, name: str, results: list[dict]) -> dict:
  """Seeds concatenated in run order; ReportError when the runs differ in n0, n, alpha, σ, radii or noise."""
  out = {'kind': KIND, **{k: registry.agree(label, f'the {k} of {name}', [r.get(k) for r in results]) for k in _SAME}}
  out['num_images'] = registry.one_or_all([r['num_images'] for r in results])
  for k in ('certified_accuracy', 'radius', 'abstained'):
    out[k] = registry.seeds_concatenated(results, k)
  return out


def check_result(where: str, result: dict, seeds: int) -> None:
  """Sample counts, alpha, σ [S], radii [R]; certified accuracy [K][S][R], radius [K][S][N] (null
  allowed), abstained [K][S]."""
  registry.check_fields(result, where, num_images=int, n0=int, n=int, alpha=float)
  registry.check_array(result.get('sigmas'), (None,), f'{where}.sigmas')
  registry.check_array(result.get('radii'), (None,), f'{where}.radii')
  s, r = len(result['sigmas']), len(result['radii'])
  registry.check_array(result.get('certified_accuracy'), (seeds, s, r), f'{where}.certified_accuracy')
  registry.check_array(result.get('radius'), (seeds, s, result['num_images']), f'{where}.radius', allow_none=True)
  registry.check_array(result.get('abstained'), (seeds, s), f'{where}.abstained')


def aggregate(name: str, model: registry.Model) -> None:
  """``entry[name]``: the settings, and per σ the mean ± SEM over seeds of the certified accuracy at
  each radius and of the abstained images."""
  c = model.pooled['results'][name]
  acc = np.asarray(c['certified_accuracy'], np.float64)   # [K, S, R]
  abstained = np.asarray(c['abstained'], np.float64)      # [K, S]
  per_sigma = []
  for j, sigma in enumerate(c['sigmas']):
    per_sigma.append({'sigma': sigma, **registry.mean_sem(acc[:, j]),
                      'abstained': registry.mean_sem(abstained[:, j])})
  model.entry[name] = {**{k: c[k] for k in ('n0', 'n', 'alpha', 'num_images', 'radii')}, 'seeds': int(len(acc)),
                       'certified_accuracy': per_sigma}


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, pool=pool, check=check_result))
