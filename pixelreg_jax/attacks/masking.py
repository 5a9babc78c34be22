"""Gradient-masking checks over accuracy curves (Athalye, Carlini & Wagner 2018; Carlini et al. 2019).

Pure functions of robustness records (JSON-serialisable nested dicts of lists), not of models.
The record is ``evaluate``'s ``robustness.json`` (docs/evaluation.md); the checks read its
accuracy curves, the results of kind 'curve':

    {'clean_accuracy': [K],                 # one per seed
     'num_images': N,                       # optional: sets the one-image tolerance 1/N
     'num_classes': 10,                     # optional (default 10): chance = 1/num_classes
     'results': {
        'fgsm':    {'kind': 'curve', 'levels': [L], 'accuracy': [[L] × K]},   # transferred FGSM
        'uniform': {'kind': 'curve', 'levels': [L], 'accuracy': [[L] × K]},   # x + ε·U(−1, 1): L∞ size ε
        'pgd_linf': {'kind': 'curve', 'levels': [L], 'accuracy': [[L] × K],
                     'settings': {'norm': 'linf', 'steps': 10, 'restarts': 1, 'rel_step_size': 2.5,
                                  'loss': 'ce', 'random_start': True}},     # PgdConfig.settings()
        'pgd_linf_steps40': {..., 'settings': {..., 'steps': 40}},
        'pgd_linf_steps40_restarts5': {..., 'settings': {..., 'steps': 40, 'restarts': 5}},
        'pgd_l2': {..., 'settings': {'norm': 'l2', ...}},
        ...}}                                 # results of other kinds are ignored

A curve is white-box PGD when it has ``settings`` with a ``norm`` (``whitebox.PgdConfig``);
accuracies are fractions in [0, 1]; levels increase; every attack has the same K seeds.

``gradient_masking_checks(record)`` returns ``[{'check', 'passed', 'detail'}]``, one entry per
check that the record has the curves for (a check whose attacks are missing is left out):

  pgd_below_transfer[<pgd>]   L∞ PGD accuracy ≤ transferred FGSM accuracy at equal ε, on the
                              levels of 'fgsm' inside PGD's grid (PGD interpolated linearly).
                              FGSM's level scales the batch range (hi − lo); that is ε in pixel
                              units for test batches spanning [0, 1] (MNIST, CIFAR: ≈ always).
  pgd_below_noise[<pgd>]      L∞ PGD accuracy ≤ accuracy under uniform noise of the same L∞ size.
  pgd_reaches_chance[<pgd>]   L∞ PGD at its largest ε: mean accuracy ≤ chance + ``final_margin``
                              (default margin 0: ≤ 0.1 for 10 classes). Undefended and weakly
                              regularized networks reach ~0 at MNIST 0.3 / CIFAR 8/255; a curve
                              stuck above chance there points at masking or a broken attack.
  pgd_monotone[<pgd>]         accuracy does not rise with ε (each PGD attack, any norm).
  more_steps[<a> -> <b>]      a PGD variant with more steps (same norm and loss, restarts ≥)
  more_restarts[<a> -> <b>]   or more restarts (steps ≥) never has higher accuracy;
  more_steps_restarts[...]    both more.

And where the record has black-box attacks (``evaluation.square``, ``evaluation.hopskipjump``):

  pgd_below_blackbox[<pgd> vs <square>]   PGD accuracy ≤ the score-based Square attack's of the
                              same norm at equal ε (Square's levels inside PGD's grid): a black-box
                              attack beating the white-box one is the classic sign of masked
                              gradients (Athalye et al. 2018, §3.1). Both attack the first images
                              of the evaluated set; the tolerance's one image is of the smaller set.
  more_queries[<square>_queries]  Square's accuracy after its whole budget ≤ after every smaller
                              query count;
  more_queries[<hopskipjump>] HopSkipJump's median distance at its largest budget ≤ at every smaller
                              budget (seeds where a budget has no success left out): a black-box
                              attack never gets weaker with more queries.

Tolerance ("never higher"): the comparisons are paired over seeds (same seeds, same images): at a
level, attack a exceeds attack b if mean_k(a_k − b_k) > max(1/N, z·SEM_k(a_k − b_k)), i.e. by
more than one image (N from ``num_images``, else 0) and more than ``z`` (default 2) standard errors
of the seed-paired difference. ``compare_models`` tabulates two models (e.g. unregularized vs
regularized) per attack and ε as mean ± SEM over seeds and their difference.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

Record = dict
TRANSFER, NOISE = 'fgsm', 'uniform'


def mean_sem(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error of the mean, SEM = s/√n with n − 1 degrees of freedom (0 for n = 1)."""
  samples = np.asarray(samples, np.float64)
  n = samples.shape[axis]
  mean = samples.mean(axis=axis)
  if n < 2:
    return mean, np.zeros_like(mean)
  return mean, samples.std(axis=axis, ddof=1) / np.sqrt(n)


def curves(record: Record) -> dict[str, dict]:
  """The accuracy curves of ``record['results']`` (kind 'curve'), by name."""
  return {name: r for name, r in record.get('results', {}).items() if r.get('kind') == 'curve'}


def pgd_attacks(record: Record) -> dict[str, dict]:
  """The white-box PGD curves of ``record`` (those with ``settings['norm']``)."""
  return {name: a for name, a in curves(record).items() if 'norm' in a.get('settings', {})}


def _curve(entry: dict) -> tuple[np.ndarray, np.ndarray]:
  """Levels [L] and accuracy [K, L] of an attack entry."""
  acc = np.atleast_2d(np.asarray(entry['accuracy'], np.float64))
  return np.asarray(entry['levels'], np.float64), acc


def _at(entry: dict, levels: np.ndarray) -> np.ndarray:
  """Accuracy [K, len(levels)] of ``entry`` at ``levels`` (inside its grid), linearly interpolated."""
  own, acc = _curve(entry)
  return np.stack([np.interp(levels, own, row) for row in acc])


def _tolerance(record: Record, diff: np.ndarray, z: float) -> np.ndarray:
  """Per level: max(one image, z·SEM of the seed-paired difference [K, L])."""
  one_image = 1.0 / record['num_images'] if record.get('num_images') else 0.0
  return np.maximum(one_image, z * mean_sem(diff)[1])


def _excess(record: Record, a: np.ndarray, b: np.ndarray, z: float):
  """Where a exceeds b beyond the tolerance: (mask [L], mean excess [L], tolerance [L])."""
  if a.shape != b.shape:
    raise ValueError(f'curves of different shapes {a.shape} and {b.shape} (seeds must match)')
  diff = a - b
  tol = _tolerance(record, diff, z)
  mean = diff.mean(0)
  return mean > tol, mean, tol


def _not_above(record: Record, name: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray,
               levels: np.ndarray, z: float, level: str = 'ε') -> dict:
  """Check 'a ≤ b at every level (within the tolerance)'; ``level`` names the levels in the detail."""
  bad, mean, tol = _excess(record, a, b, z)
  am, bm = a.mean(0), b.mean(0)
  if bad.any():
    i = int(np.argmax(np.where(bad, mean - tol, -np.inf)))
    detail = (f'{a_name} {am[i]:.4f} > {b_name} {bm[i]:.4f} at {level}={levels[i]:.4g} (excess {mean[i]:.4f}, '
              f'tolerance {tol[i]:.4f}); {int(bad.sum())} of {len(levels)} level(s)')
  else:
    detail = (f'{a_name} ≤ {b_name} at all {len(levels)} level(s) ≤ {levels.max():.4g} '
              f'(largest excess {mean.max():.4f})')
  return {'check': name, 'passed': not bad.any(), 'detail': detail}


def _shared_levels(pgd: dict, other: dict) -> np.ndarray:
  """Levels of ``other`` inside the grid of ``pgd``."""
  own = np.asarray(pgd['levels'], np.float64)
  lv = np.asarray(other['levels'], np.float64)
  return lv[(lv >= own.min() - 1e-12) & (lv <= own.max() + 1e-12)]


def _compare_to(record: Record, check: str, name: str, pgd: dict, reference: str, z: float) -> Optional[dict]:
  ref = curves(record).get(reference)
  if ref is None:
    return None
  levels = _shared_levels(pgd, ref)
  if not len(levels):
    return None
  return _not_above(record, f'{check}[{name}]', name, _at(pgd, levels), reference, _at(ref, levels), levels, z)


def blackbox_attacks(record: Record) -> dict[str, dict]:
  """The black-box results of ``record``: Square curves (settings ``attack`` 'square'; the
  accuracy-vs-queries curves hold ``eps``) and HopSkipJump distances (kind 'decision_distance')."""
  return {name: r for name, r in record.get('results', {}).items()
          if r.get('kind') == 'decision_distance' or (r.get('kind') == 'curve'
                                                      and r.get('settings', {}).get('attack') == 'square')}


def _pgd_below_blackbox(record: Record, pgds: dict[str, dict], z: float) -> list[dict]:
  out = []
  squares = {n: e for n, e in blackbox_attacks(record).items() if e['kind'] == 'curve' and 'eps' not in e['settings']}
  for name, pgd in pgds.items():
    for sq_name, sq in squares.items():
      levels = _shared_levels(pgd, sq)
      if sq['settings'].get('lp') != pgd['settings']['norm'] or not len(levels):
        continue
      images = min(e.get('num_images') or record.get('num_images') or 0 for e in (pgd, sq))
      out.append(_not_above({'num_images': images}, f'pgd_below_blackbox[{name} vs {sq_name}]', name,
                            _at(pgd, levels), sq_name, _at(sq, levels), levels, z))
  return out


def _more_queries(record: Record, z: float) -> list[dict]:
  out = []
  for name, e in blackbox_attacks(record).items():
    if e['kind'] == 'curve' and 'eps' in e['settings']:
      levels, acc = _curve(e)
      images = {'num_images': e.get('num_images') or record.get('num_images')}
      out.append(_not_above(images, f'more_queries[{name}]', f'accuracy after {int(levels[-1])} queries',
                            np.repeat(acc[:, -1:], acc.shape[1] - 1, 1), 'after fewer', acc[:, :-1], levels[:-1], z,
                            'queries'))
    elif e['kind'] == 'decision_distance' and len(e['budgets']) > 1:
      med = np.array([[np.nan if v is None else v for v in m] for m in e['median']], np.float64)   # [K, NB]
      budgets = np.asarray(e['budgets'], np.float64)
      keep = np.isfinite(med).all(1)
      if not keep.any():
        continue
      med = med[keep]
      check = _not_above({}, f'more_queries[{name}]', f'median distance at {int(budgets[-1])} queries',
                         np.repeat(med[:, -1:], med.shape[1] - 1, 1), 'at fewer', med[:, :-1], budgets[:-1], z,
                         'budget')
      if not keep.all():
        check['detail'] += f'; {int((~keep).sum())} seed(s) without a success at some budget left out'
      out.append(check)
  return out


def _strength_pairs(pgds: dict[str, dict]) -> list[tuple[str, str, str]]:
  """(kind, weaker, stronger) for PGD variants of one norm and loss where one has ≥ steps and ≥ restarts."""
  pairs = []
  for a, ea in pgds.items():
    for b, eb in pgds.items():
      sa, sb = ea['settings'], eb['settings']
      if a == b or sa['norm'] != sb['norm'] or sa.get('loss', 'ce') != sb.get('loss', 'ce'):
        continue
      steps, restarts = sb['steps'] - sa['steps'], sb.get('restarts', 1) - sa.get('restarts', 1)
      if steps >= 0 and restarts >= 0 and steps + restarts > 0:
        kind = 'more_steps_restarts' if steps and restarts else 'more_steps' if steps else 'more_restarts'
        pairs.append((kind, a, b))
  return pairs


def gradient_masking_checks(record: Record, z: float = 2.0, final_margin: float = 0.0) -> list[dict]:
  """Runs every check the record has curves for (module docstring).

  Args:
    record: a robustness record (module docstring).
    z: standard errors of the seed-paired difference a comparison may exceed by.
    final_margin: ``pgd_reaches_chance`` passes at accuracy ≤ 1/num_classes + final_margin.

  Returns:
    [{'check': str, 'passed': bool, 'detail': str}], in a fixed order.
  """
  out = []
  pgds = pgd_attacks(record)
  chance = 1.0 / record.get('num_classes', 10)
  for name, entry in pgds.items():
    levels, acc = _curve(entry)
    norm = entry['settings']['norm']
    if norm == 'linf':
      for check, reference in (('pgd_below_transfer', TRANSFER), ('pgd_below_noise', NOISE)):
        result = _compare_to(record, check, name, entry, reference, z)
        if result is not None:
          out.append(result)
      final = acc[:, -1].mean()
      out.append({'check': f'pgd_reaches_chance[{name}]', 'passed': bool(final <= chance + final_margin),
                  'detail': f'accuracy {final:.4f} at ε={levels[-1]:.4g} (limit: chance {chance:.4f} + '
                            f'{final_margin:.4f})'})
    # Monotone: accuracy at level i+1 must not exceed accuracy at level i.
    result = _not_above(record, f'pgd_monotone[{name}]', f'{name}(ε_i+1)', acc[:, 1:], f'{name}(ε_i)',
                        acc[:, :-1], levels[1:], z)
    out.append(result)
  for kind, weak, strong in _strength_pairs(pgds):
    levels = _shared_levels(pgds[weak], pgds[strong])
    out.append(_not_above(record, f'{kind}[{weak} -> {strong}]', strong, _at(pgds[strong], levels), weak,
                          _at(pgds[weak], levels), levels, z))
  return out + _pgd_below_blackbox(record, pgds, z) + _more_queries(record, z)


def all_passed(checks: Sequence[dict]) -> bool:
  return all(c['passed'] for c in checks)


def _pooled(records: Union[Record, Sequence[Record]], attack: str) -> tuple[np.ndarray, np.ndarray]:
  """Levels and accuracy [K, L] of ``attack`` with the seeds of one or several records pooled."""
  records = [records] if isinstance(records, dict) else list(records)
  pooled = [_curve(curves(r)[attack]) for r in records]
  levels = pooled[0][0]
  for lv, _ in pooled[1:]:
    if lv.shape != levels.shape or not np.allclose(lv, levels):
      raise ValueError(f'{attack}: the records have different levels')
  return levels, np.concatenate([acc for _, acc in pooled])


def compare_models(a: Union[Record, Sequence[Record]], b: Union[Record, Sequence[Record]],
                   attacks: Optional[Sequence[str]] = None) -> dict:
  """Two models under the same attacks: mean ± SEM over seeds per ε, and b − a.

  Args:
    a, b: a robustness record per model, or a list of records whose seeds are pooled (e.g. the
      runs of one setting); typically a = unregularized, b = regularized.
    attacks: attack names (default: the white-box PGD attacks that both have).

  Returns:
    {attack: {'levels': [L], 'a': {'mean', 'sem', 'n'}, 'b': {...},
              'difference': {'mean': b − a [L], 'sem': √(SEM_a² + SEM_b²) [L]},
              'significant': [L] bools, |difference| > 2·its SEM}}, JSON-serialisable.
  """
  ra = [a] if isinstance(a, dict) else list(a)
  rb = [b] if isinstance(b, dict) else list(b)
  if attacks is None:
    names_a = set.intersection(*(set(pgd_attacks(r)) for r in ra))
    names_b = set.intersection(*(set(pgd_attacks(r)) for r in rb))
    attacks = sorted(names_a & names_b)
  out = {}
  for name in attacks:
    la, acc_a = _pooled(ra, name)
    lb, acc_b = _pooled(rb, name)
    if la.shape != lb.shape or not np.allclose(la, lb):
      raise ValueError(f'{name}: the two models were attacked at different levels')
    (ma, sa), (mb, sb) = mean_sem(acc_a), mean_sem(acc_b)
    diff, dsem = mb - ma, np.sqrt(sa ** 2 + sb ** 2)
    out[name] = {'levels': la.tolist(),
                 'a': {'mean': ma.tolist(), 'sem': sa.tolist(), 'n': int(len(acc_a))},
                 'b': {'mean': mb.tolist(), 'sem': sb.tolist(), 'n': int(len(acc_b))},
                 'difference': {'mean': diff.tolist(), 'sem': dsem.tolist()},
                 'significant': (np.abs(diff) > 2 * dsem).tolist()}
  return out


def comparison_markdown(comparison: dict, labels: tuple[str, str] = ('unregularized', 'regularized')) -> str:
  """A markdown table of ``compare_models``: one row per attack and ε, accuracy in %."""
  lines = [f'| attack | ε | {labels[0]} | {labels[1]} | difference |', '|---|---|---|---|---|']
  for name, c in comparison.items():
    for i, eps in enumerate(c['levels']):
      a = f"{100 * c['a']['mean'][i]:.1f} ± {100 * c['a']['sem'][i]:.1f}"
      b = f"{100 * c['b']['mean'][i]:.1f} ± {100 * c['b']['sem'][i]:.1f}"
      d = f"{100 * c['difference']['mean'][i]:+.1f} ± {100 * c['difference']['sem'][i]:.1f}"
      lines.append(f"| {name} | {eps:.4g} | {a} | {b} | {d}{' *' if c['significant'][i] else ''} |")
  return '\n'.join(lines) + '\n'
