"""The score-based Square attack (``attacks.square``), L∞ and L2: results of kind 'curve'.

  square_linf, square_l2      robust accuracy at each ε of ``settings.square.linf_eps`` /
                              ``l2_eps`` ('' = the dataset family's grid, ``attacks.square.SQUARE_EPS``)
                              after the whole budget of ``n_queries`` queries per image and ε; and
                              accuracy after each query count of ``settings.square.queries`` at the ε
                              ``query_level`` indexes, as a second curve ``square_<norm>_queries``
  square_linf_queries, …      the same evaluator (so that a merged record keeps the pair together)
  square                      both norms

On the first ``settings.square.images`` evaluated images, in batches of ``settings.square.batch``,
perturbed in [0, 1] at native size within the test set's range (``ctx.bounds``, as PGD). A
result: ``{'kind': 'curve', 'levels': [L] ε, 'accuracy': [K][L], 'settings':
SquareConfig.settings(), 'num_images', 'seconds'}``; the queries curve has ``'levels'``: [Q] query
counts, ``'accuracy'``: [K][Q] and ``settings['eps']``. Their settings name the norm ``lp``, not
``norm``: a curve with a ``norm`` is white-box PGD to the gradient-masking checks and the report's
white-box figure. Both pool and aggregate as every curve (``evaluation.curves``). The settings are
checked by ``check`` (before any data is loaded), not by ``settings.validate``.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax.numpy as jnp
import ml_collections
import numpy as np

from pixelreg_jax import data as data_lib
from pixelreg_jax.attacks import square as square_lib
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import curves, registry
from pixelreg_jax.evaluation.context import Context, log_curve, sweep

USES = ('settings.square',)
_INTS = {'images': 0, 'n_queries': 1, 'batch': 1}


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _numbers(settings: ml_collections.ConfigDict, field: str, kind: type) -> list:
  """``settings.square.<field>``, comma-separated, as ``kind`` (ConfigError naming the bad part)."""
  text = str(settings.square[field])
  out = []
  for part in (p.strip() for p in text.split(',')):
    try:
      v = kind(part)
    except ValueError:
      raise ConfigError(f'eval.square.{field}={text!r}: {part!r} is not {"an integer" if kind is int else "a number"}'
                        ) from None
    if not math.isfinite(v):
      raise ConfigError(f'eval.square.{field}={text!r}: {part!r} is not finite')
    out.append(v)
  if any(b <= a for a, b in zip(out, out[1:])):
    raise ConfigError(f'eval.square.{field}={text!r}: the values must increase')
  return out


def eps_levels(settings: ml_collections.ConfigDict, dataset: str, norm: str) -> np.ndarray:
  """The radii ε [L] of ``norm`` (float32): ``settings.square.<norm>_eps`` or the family's default."""
  if str(settings.square[f'{norm}_eps']).strip():
    return np.asarray(_numbers(settings, f'{norm}_eps', float), np.float32)
  family = data_lib.get_info(dataset).family
  if family not in square_lib.SQUARE_EPS:
    raise ConfigError(f'no default Square radii for the {family!r} family of {dataset!r}; set --eval.square.'
                      f'{norm}_eps')
  return np.asarray(square_lib.SQUARE_EPS[family][norm], np.float32)


def query_points(settings: ml_collections.ConfigDict) -> np.ndarray:
  """The query counts [Q] of the accuracy-vs-queries curve (int32): ``settings.square.queries`` or
  0, 1, 2, 5, 10, 20, 50, … below ``n_queries``, and ``n_queries``."""
  n = settings.square.n_queries
  if str(settings.square.queries).strip():
    return np.asarray(_numbers(settings, 'queries', int), np.int32)
  grid = [0] + [m * 10 ** k for k in range(10) for m in (1, 2, 5)]
  return np.asarray([q for q in grid if q < n] + [n], np.int32)


def check(settings: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ConfigError for a ``settings.square`` the evaluators cannot run with."""
  s = settings.square
  for field, low in _INTS.items():
    if not _is_int(s[field]):
      raise ConfigError(f'eval.square.{field}={s[field]!r}: an integer is needed')
    if s[field] < low:
      raise ConfigError(f'eval.square.{field}={s[field]}: must be at least {low}')
  p = s.p_init
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
    raise ConfigError(f'eval.square.p_init={p!r}: must be a number in (0, 1]')
  for norm in square_lib.NORMS:
    levels = eps_levels(settings, config.dataset, norm)
    if levels[0] < 0:
      raise ConfigError(f'eval.square.{norm}_eps={s[f"{norm}_eps"]!r}: radii must be at least 0')
    if not _is_int(s.query_level) or not -len(levels) <= s.query_level < len(levels):
      raise ConfigError(f'eval.square.query_level={s.query_level!r}: must index the {len(levels)} {norm} radii '
                        f'(from {-len(levels)} to {len(levels) - 1})')
  points = query_points(settings)
  if points[0] < 0 or points[-1] > s.n_queries:
    raise ConfigError(f'eval.square.queries={s.queries!r}: query counts must lie in [0, n_queries={s.n_queries}]')


def square_curves(ctx: Context, norm: str) -> dict:
  """{'levels' [L], 'accuracy' [K, L], 'points' [Q], 'by_queries' [K, Q] at ε = levels[query_level],
  'mean_queries' [K, L]} of the ``norm`` Square attack on ``settings.square.images`` images."""
  s = ctx.settings.square
  cfg = square_lib.SquareConfig(norm, s.n_queries, float(s.p_init))
  levels = eps_levels(ctx.settings, ctx.run.config.dataset, norm)
  points = query_points(ctx.settings)
  images, labels = ctx.subset(s.images)
  lo, hi = ctx.bounds

  def correct(logits_fn, key, x, y, m, shared):
    del shared
    return square_lib.correct_under_square(logits_fn, key, x, y, jnp.asarray(levels), jnp.asarray(points),
                                           lo, hi, cfg, m)

  batched = ml_collections.ConfigDict(ctx.settings.to_dict())
  batched.batch_size = s.batch
  out = sweep(dataclasses.replace(ctx, settings=batched), correct, ctx.key_for(f'square_{norm}'), images, labels)
  return {'cfg': cfg, 'levels': levels, 'accuracy': np.asarray(out['accuracy']), 'points': points,
          'by_queries': np.asarray(out['by_queries'])[:, s.query_level], 'mean_queries': np.asarray(out['queries']),
          'num_images': int(len(images))}


def _evaluate(ctx: Context, record: dict, norm: str) -> None:
  t = time.time()
  r = square_curves(ctx, norm)
  seconds = time.time() - t
  name, settings = f'square_{norm}', r['cfg'].settings()
  eps = float(r['levels'][ctx.settings.square.query_level])
  record['results'][name] = {'kind': curves.KIND, 'levels': r['levels'].tolist(), 'accuracy': r['accuracy'].tolist(),
                             'settings': settings, 'num_images': r['num_images'], 'seconds': seconds}
  record['results'][f'{name}_queries'] = {
      'kind': curves.KIND, 'levels': r['points'].tolist(), 'accuracy': r['by_queries'].tolist(),
      'settings': dict(settings, eps=eps), 'num_images': r['num_images'], 'seconds': 0.0}
  log_curve(ctx, name, r['accuracy'], seconds)
  ctx.log(f'{name}: mean queries per image {" ".join(f"{q:.1f}" for q in np.mean(r["mean_queries"], 0))}; '
          f'accuracy at ε={eps:g} after {"/".join(map(str, r["points"]))} queries: '
          f'{" ".join(f"{a:.3f}" for a in np.mean(r["by_queries"], 0))}')


NAMES = [f'square_{n}{suffix}' for n in square_lib.NORMS for suffix in ('', '_queries')]


@registry.evaluator(*NAMES, 'square', check=check, uses=USES)
def evaluate_square(ctx: Context, record: dict, name: str) -> None:
  norms = square_lib.NORMS if name == 'square' else (name.split('_')[1],)
  for norm in norms:
    if f'square_{norm}' not in record['results']:     # e.g. --attacks=square_linf,square_linf_queries: once
      _evaluate(ctx, record, norm)
