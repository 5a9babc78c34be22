"""The report's markdown (robustness.md), from the aggregate (``report.aggregate``).

Every cell is the mean ± SEM over a model's seeds ('–' where undefined); a failed
gradient-masking check is printed as **FAILED**, never left out.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from pixelreg_jax.report.figures import (
  NORM_NAMES,
  attack_order,
  attack_title,
  entries_of,
  square_order,
  titled,
)


def _pm(cell: Optional[dict], fmt: str = '.3f', sem_fmt: Optional[str] = None) -> str:
  """'0.812 ± 0.004' from {'mean', 'sem'}; '–' where undefined."""
  if not cell or cell.get('mean') is None or not math.isfinite(cell['mean']):
    return '–'
  sem = cell.get('sem')
  sem_text = '–' if sem is None or not math.isfinite(sem) else format(sem, sem_fmt or fmt)
  return f'{format(cell["mean"], fmt)} ± {sem_text}'


def _num(v: Any, fmt: str = '.3f') -> str:
  return '–' if not isinstance(v, (int, float)) or not math.isfinite(v) else format(v, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ['| ' + ' | '.join(map(str, header)) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
  return lines + ['']


def _models_section(agg: dict) -> list[str]:
  rows = []
  for label, e in agg.items():
    epochs = [f'{c.get("checkpoint_epoch")}' + (' (fallback)' if c.get('fallback_reason') else '')
              + (f' (unfinished: {c["unfinished"]})' if c.get('unfinished') else '') for c in e.get('checkpoints', [])]
    alpha = e['alpha'] if isinstance(e['alpha'], list) else f'{e["alpha"]:g}'
    rows.append([label + (' (baseline)' if e.get('is_baseline') else ''), e.get('dataset') or '?', len(e['workdirs']),
                 e['n'], alpha, _pm(e.get('clean_accuracy')), ', '.join(epochs) or '–'])
  lines = ['## Models', ''] + _table(['model', 'dataset', 'runs', 'n (seeds)', 'α', 'clean accuracy',
                                      'checkpoint epoch'], rows)
  base = [label for label, e in agg.items() if e.get('is_baseline')]
  if base:
    lines.append(f'Mean ± SEM over the n seeds of each model. Baseline of the comparisons (mCE, white-box): '
                 f'**{base[0]}**.')
  else:
    zero = [label for label, e in agg.items() if e['alpha'] == 0]
    lines.append(f'Mean ± SEM over the n seeds of each model. No baseline ({len(zero)} models of α=0 runs): no '
                 'mCE or white-box comparison; name one with --baseline.')
  return lines + ['']


def _curve_tables(agg: dict, attacks: Sequence[tuple[str, dict]]) -> list[str]:
  """Per attack, accuracy (mean ± SEM) at each level, one row per model."""
  lines = []
  for name, first in attacks:
    rows = [(label, e['attacks'][name], e['n']) for label, e in agg.items() if name in e.get('attacks', {})]
    images = first.get('num_images')
    lines.append(f'**{attack_title(name, first)}**' + (f' (`{name}`, {images} images)' if images else '') + '\n')
    levels = rows[0][1]['levels']
    lines += _table(['model', 'n'] + [f'{l:.3g}' for l in levels],
                    [[label, n] + [_pm({'mean': m, 'sem': s}) for m, s in zip(a['mean'], a['sem'])]
                     for label, a, n in rows])
  return lines


def _boundary_section(agg: dict) -> list[str]:
  items = [(label, e['boundary'], e['n']) for label, e in agg.items() if 'boundary' in e]
  if not items:
    return []
  rows = []
  for label, b, n in items:
    rows.append([label, n, _pm(b['score'], '.3e', '.1e'), b['protocol'], b['steps'],
                 f'{b["num_images"]} × {b["repeats"]}',
                 *(f'{b[k]} of {b["attacked"]}' if k in b else '–' for k in ('no_start', 'not_adversarial'))])
  lines = ['**Boundary attack**: score = median ‖δ‖²/D over the images attacked successfully, mean over repeats; '
           'mean ± SEM over seeds (higher = more robust)\n']
  lines += _table(['model', 'n', 'score', 'protocol', 'steps', 'images × repeats', 'no start', 'not adversarial'],
                  rows)
  lines.append('No start / not adversarial: images left out of the median, summed over seeds and repeats '
               '(of images × repeats × seeds attacked).')
  undefined = [f'{label} ({b["seeds_without_score"]} of {n} seeds)' for label, b, n in items
               if b['seeds_without_score']]
  if undefined:
    lines.append(f'No score where a repeat had no successful image: {", ".join(undefined)}.')
  return lines + ['']


def _whitebox_section(agg: dict) -> list[str]:
  from pixelreg_jax.attacks import masking  # pylint: disable=import-outside-toplevel  # imports JAX
  attacks = attack_order(agg, pgd=True)
  if not attacks:
    return []
  lines = ['## White-box PGD (robustness_whitebox.png)', ''] + _curve_tables(agg, attacks)
  for label, e in agg.items():
    if 'whitebox_vs_baseline' in e:
      base = e['whitebox_vs_baseline']['baseline']
      lines += [f'**{label} vs {base}**: accuracy in %, mean ± SEM over seeds; difference = {label} − {base}, '
                '* where |difference| > 2 SEM\n',
                masking.comparison_markdown(e['whitebox_vs_baseline']['comparison'], (base, label))]
  return lines


def _masking_section(agg: dict) -> list[str]:
  items = [(label, e) for label, e in agg.items() if 'gradient_masking_checks' in e]
  if not items:
    return []
  lines = ['## Gradient-masking checks', '',
           'Each model\'s checks on its pooled seeds (`attacks.masking`); a failure points at gradient masking or '
           'a broken attack.', '']
  for label, e in items:
    checks = e['gradient_masking_checks']
    failed = [c['check'] for c in checks if not c['passed']]
    verdict = (f'all {len(checks)} checks passed' if not failed
               else f'**{len(failed)} of {len(checks)} checks FAILED**: {", ".join(failed)}')
    lines.append(f'**{label}** (n={e["n"]}): {verdict}\n')
    lines += _table(['check', 'result', 'detail'],
                    [[f'`{c["check"]}`', 'passed' if c['passed'] else '**FAILED**', c['detail']] for c in checks])
    per_run = {w: f for w, f in e.get('gradient_masking_failed_per_run', {}).items() if f}
    if per_run:
      lines += ['Checks **FAILED** in single runs (each run\'s seeds alone):\n'] + [
          f'- `{w}`: {", ".join(f"`{c}`" for c in f)}' for w, f in per_run.items()] + ['']
    elif 'gradient_masking_failed_per_run' in e:
      lines.append(f'Every check also passes in each of the {len(e["workdirs"])} runs alone.\n')
  return lines


def _blackbox_section(agg: dict) -> list[str]:
  """Square's curves (accuracy, as every curve) and HopSkipJump's median distance per budget."""
  squares = square_order(agg)
  decisions = entries_of(agg, 'budgets')
  if not squares and not decisions:
    return []
  lines = ['## Black-box attacks beyond the paper (robustness_blackbox.png)', '']
  if squares:
    lines += ['Square (score-based; accuracy after the query budget, or after each query count at one ε), mean ± SEM '
              'over seeds:', ''] + _curve_tables(agg, squares)
  for name in decisions:
    items = [(label, e[name], e['n']) for label, e in agg.items() if name in e]
    h = items[0][1]
    lines.append(f'**HopSkipJump {NORM_NAMES.get(h["norm"], h["norm"])}** (`{name}`, {h["num_images"]} images): '
                 'median distance of the closest adversarial example found within each query budget, in [0, 1] '
                 'units (L2: RMS pixel change), mean ± SEM over seeds; higher = more robust\n')
    rows = [[label, n] + [_pm(c, '.4f') for c in r['median']]
            + [f'{r["successful"][-1]} of {r["attacked"]}', r['no_start']] for label, r, n in items]
    lines += _table(['model', 'n'] + [f'{b} queries' for b in h['budgets']] + ['successful (largest budget)',
                                                                              'no start'], rows)
  return lines


def _certified_section(agg: dict) -> list[str]:
  """Randomized smoothing: per σ, the certified accuracy at each radius (model × radius)."""
  names = entries_of(agg, 'certified_accuracy')
  if not names:
    return []
  name = names[0]
  items = [(label, e[name], e['n']) for label, e in agg.items() if name in e]
  c = items[0][1]
  lines = ['## Certified L2 robustness (robustness_certified.png)', '',
           f'Randomized smoothing (Cohen et al. 2019, CERTIFY): n0 = {c["n0"]}, n = {c["n"]} noise samples per image, '
           f'each certificate holds with probability ≥ {1 - c["alpha"]:g}; {c["num_images"]} images. Certified '
           'accuracy = the fraction of images the smoothed model classifies correctly with a certified radius ≥ r '
           '(abstentions count as wrong); mean ± SEM over seeds.', '']
  sigmas = list(dict.fromkeys(p['sigma'] for _, r, _ in items for p in r['certified_accuracy']))
  for sigma in sigmas:
    rows = []
    for label, r, n in items:
      p = next((p for p in r['certified_accuracy'] if p['sigma'] == sigma), None)
      if p is not None:
        rows.append([label, n] + [_pm({'mean': m, 'sem': s}) for m, s in zip(p['mean'], p['sem'])]
                    + [_pm(p['abstained'], '.1f')])
    lines.append(f'**σ = {sigma:g}**\n')
    lines += _table(['model', 'n'] + [f'r = {v:g}' for v in c['radii']] + ['abstained (images)'], rows)
  return lines


def _severity_text(s: Sequence[int]) -> str:
  return f'{s[0]}–{s[-1]}' if len(s) > 1 and list(s) == list(range(s[0], s[-1] + 1)) else ', '.join(map(str, s))


def _corruption_section(agg: dict) -> list[str]:
  models = [(label, e['corruptions']) for label, e in agg.items() if 'corruptions' in e]
  if not models:
    return []
  names = list(dict.fromkeys(n for _, c in models for n in c['accuracy']))
  severities = {n: c['severities'][n] for _, c in models for n in c['severities']}
  evaluated = {f'{c["variant"]}, {c["num_images"]} images' for _, c in models}
  lines = ['## Common corruptions (robustness_corruptions.png)', '',
           (evaluated.pop() if len(evaluated) == 1 else
            '; '.join(f'{label}: {c["variant"]}, {c["num_images"]} images' for label, c in models))
           + '. Accuracy averaged over the severities per seed, mean ± SEM over seeds (per severity: summary.json).',
           '']
  rows = [[n.replace('_', ' '), _severity_text(severities[n])] + [_pm(c['accuracy'].get(n)) for _, c in models]
          for n in names]
  rows.append(['**mean**', ''] + [_pm(c.get('mean_accuracy')) for _, c in models])
  lines += _table(['corruption', 'severities'] + [label for label, _ in models], rows)
  compared = [(label, c['errors']) for label, c in models if 'errors' in c]
  if compared:
    base = compared[0][1]['baseline']
    lines.append(f'**Corruption error against {base}** (Hendrycks & Dietterich): CE_c = Σ_s E_s,c / Σ_s E^{base}_s,c '
                 'with E = 1 − accuracy (seed mean), mCE = mean_c CE_c; relative: each model\'s clean error '
                 'subtracted; < 1 = fewer errors than the baseline\n')
    rows = [[n.replace('_', ' ')] + [_num(e.get('ce', {}).get(n)) for _, e in compared] for n in names]
    rows.append(['**mCE**'] + [f'**{_num(e.get("mce"))}**' for _, e in compared])
    rows.append(['**relative mCE**'] + [_num(e.get('relative_mce')) for _, e in compared])
    lines += _table(['corruption'] + [label for label, _ in compared], rows)
    lines += [f'{label}: {e["note"]}.' for label, e in compared if 'note' in e]
  return lines + ['']


def markdown_report(agg: dict, title: Optional[str] = None) -> str:
  """robustness.md. Sections (each only with its results):

    # <title>                (naming the dataset(s): ``figures.titled``)
    ## Models                 model | dataset | runs | n | α | clean accuracy | checkpoint epoch; the baseline
    ## Paper attacks          a table per noise attack / transferred FGSM (model × level), then the
                              Boundary table (score, protocol, steps, images × repeats, no start,
                              not adversarial)
    ## White-box PGD          a table per variant (model × ε); each model against the baseline
                              (``masking.comparison_markdown``)
    ## Black-box attacks   Square's curves (model × ε, model × queries); HopSkipJump: model × budget
    ## Certified L2 robustness  per σ, model × radius: certified accuracy
    ## Gradient-masking checks  per model a verdict line and check | result | detail (**FAILED**)
    ## Common corruptions     corruption | severities | accuracy per model, a mean row; the CE per
                              corruption, mCE and relative mCE per model against the baseline
  """
  lines = [f'# {titled(title or "Robustness report", agg)}', ''] + _models_section(agg)
  paper = _curve_tables(agg, attack_order(agg, pgd=False)) + _boundary_section(agg)
  if paper:
    lines += ['## Paper attacks (robustness.png)', ''] + paper
  lines += (_whitebox_section(agg) + _blackbox_section(agg) + _certified_section(agg) + _masking_section(agg)
            + _corruption_section(agg))
  return '\n'.join(lines).rstrip('\n') + '\n'

