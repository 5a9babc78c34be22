"""The report's figures, from the aggregate (``report.aggregate``): each model a colour, mean ± SEM over its seeds.

  robustness.png              the paper's Fig. 2/3: accuracy vs level per noise attack and
                              transferred FGSM (mean line, ± SEM band), and the Boundary score bars
  robustness_whitebox.png     white-box PGD: a panel per variant, a row per norm
  robustness_corruptions.png  accuracy per corruption, mean over severities (grouped bars)
  robustness_blackbox.png     beyond the paper's Boundary attack: Square (accuracy vs ε per norm,
                              accuracy vs queries) and HopSkipJump (median distance vs query budget)
  robustness_certified.png    randomized smoothing: certified accuracy vs L2 radius, a panel per σ

Each ``plot*`` returns False (and writes nothing) when no model has its results. Every title names
the dataset(s) (``titled``). matplotlib is imported when the first figure is drawn.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

ATTACK_TITLES = {'gaussian': 'Gaussian noise σ', 'uniform': 'Uniform noise ε', 'salt_pepper': 'Salt & pepper p',
                 'fgsm': 'Transferred FGSM ε'}
NORM_NAMES = {'linf': 'L∞', 'l2': 'L2'}


def titled(title: Optional[str], agg: dict) -> str:
  """``title`` naming the dataset of every model: as it is when it names them all (as words:
  'mnist' is not named by 'fashion_mnist'), else with the others added in parentheses; without a
  title, the datasets."""
  names = sorted({str(e.get('dataset') or 'unknown dataset') for e in agg.values()})
  if not title:
    return ' / '.join(names)
  missing = [n for n in names if not re.search(rf'(?<!\w){re.escape(n)}(?!\w)', title)]
  return f'{title} ({", ".join(missing)})' if missing else title


def _pyplot():
  """matplotlib.pyplot with the Agg backend (files only, no display)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def is_pgd(entry: dict) -> bool:
  """White-box PGD, by the rule of ``masking.pgd_attacks``: settings with a norm."""
  return 'norm' in entry.get('settings', {})


def is_square(entry: dict) -> bool:
  """A Square attack's curve (``evaluation.square``): settings of attack 'square'."""
  return entry.get('settings', {}).get('attack') == 'square'


def _curves_where(agg: dict, keep) -> dict[str, dict]:
  """{name: the first model's entry} of the curves (``entry['attacks']``) of any model for which
  ``keep(entry)`` holds, in first-seen order."""
  found: dict[str, dict] = {}
  for e in agg.values():
    for name, a in e.get('attacks', {}).items():
      if keep(a):
        found.setdefault(name, a)
  return found


def square_order(agg: dict) -> list[tuple[str, dict]]:
  """(name, an entry) of every Square curve of the models: the ε curves, then the queries curves,
  L∞ before L2."""
  found = _curves_where(agg, is_square)
  norms = list(NORM_NAMES)
  return sorted(found.items(), key=lambda item: ('eps' in item[1]['settings'], norms.index(item[1]['settings']['lp'])
                                                 if item[1]['settings']['lp'] in norms else len(norms), item[0]))


def entries_of(agg: dict, field: str) -> list[str]:
  """The names of the model entries' results holding ``field`` (e.g. 'budgets': HopSkipJump's,
  'certified_accuracy': randomized smoothing's), in first-seen order."""
  return list(dict.fromkeys(n for e in agg.values() for n, v in e.items() if isinstance(v, dict) and field in v))


def attack_title(name: str, entry: dict) -> str:
  """'Gaussian noise σ', …, e.g. 'White-box PGD L∞ ε, 40 steps × 5 restarts' from the PGD settings, or
  from Square's 'Square L∞ ε, 1000 queries' (its accuracy-vs-queries curve: 'Square L∞ queries, ε = 0.3')."""
  s = entry.get('settings', {})
  if is_square(entry):
    norm = NORM_NAMES.get(s['lp'], s['lp'])
    return f'Square {norm} queries, ε = {s["eps"]:.3g}' if 'eps' in s else f'Square {norm} ε, {s["n_queries"]} queries'
  if 'norm' not in s:
    return ATTACK_TITLES.get(name, name)
  title = f'White-box PGD {NORM_NAMES.get(s["norm"], s["norm"])} ε, {s.get("steps", "?")} steps'
  if s.get('restarts', 1) > 1:
    title += f' × {s["restarts"]} restarts'
  if s.get('loss', 'ce') != 'ce':
    title += f', {s["loss"]} loss'
  if not s.get('random_start', True):
    title += ', no random start'
  return title


def attack_order(agg: dict, pgd: bool) -> list[tuple[str, dict]]:
  """(name, an entry) of every curve of the models but Square's: the paper's first, then the others;
  PGD sorted by norm, steps, restarts."""
  found = _curves_where(agg, lambda a: is_pgd(a) == pgd and not is_square(a))
  if pgd:
    norms = list(NORM_NAMES)

    def key(item):
      s = item[1]['settings']
      return (norms.index(s['norm']) if s['norm'] in norms else len(norms), s.get('steps', 0),
              s.get('restarts', 1), item[0])
    return sorted(found.items(), key=key)
  first = [(n, found[n]) for n in ATTACK_TITLES if n in found]
  return first + sorted((n, a) for n, a in found.items() if n not in ATTACK_TITLES)


def _colors(plt, agg: dict) -> dict[str, str]:
  """One colour per model, the same in every figure."""
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  return {label: cycle[i % len(cycle)] for i, label in enumerate(agg)}


def short_labels(labels: Sequence[str]) -> list[str]:
  """Tick labels: each label's first word ('regularized'); where two would be equal, the first
  word and the settings in the label's parentheses ('regularized\nα=4, Th=0.8'), else numbered."""
  words = [label.split(' (')[0].split()[0] if label.strip() else '?' for label in labels]

  def settings(label: str) -> str:
    inside = label.split(' (', 1)[1].rsplit(')', 1)[0] if ' (' in label else ''
    return ', '.join(p for p in inside.split(', ') if not p.startswith('by '))

  longer = [w if words.count(w) == 1 else f'{w}\n{settings(label)}' if settings(label) else w
            for w, label in zip(words, labels)]
  return [s if longer.count(s) == 1 else f'{s} {i + 1}' for i, s in enumerate(longer)]


def _curve_panel(ax, agg: dict, name: str, colors: dict[str, str], xlabel: str) -> None:
  """Accuracy vs level of attack ``name``: mean line and ± SEM band per model (a symmetric-log x
  axis for Square's query counts)."""
  for label, e in agg.items():
    if name not in e.get('attacks', {}):
      continue
    a = e['attacks'][name]
    x, m, s = np.asarray(a['levels']), np.asarray(a['mean']), np.asarray(a['sem'])
    ax.plot(x, m, color=colors[label], label=f'{label} (n={e["n"]})')
    ax.fill_between(x, m - s, m + s, color=colors[label], alpha=0.25)
  first = next((e['attacks'][name] for e in agg.values() if name in e.get('attacks', {})), {})
  if is_square(first) and 'eps' in first['settings']:
    ax.set_xscale('symlog', linthresh=1)
  ax.set_xlabel(xlabel)
  ax.set_ylabel('accuracy')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)


def _save(fig, axes: Sequence, path: str, title: Optional[str], ncol: int = 3) -> None:
  """A legend of the models under the panels (each label once, at most ``ncol`` columns and as many
  as the figure's width holds; the figure grows by its height), the title, and the PNG."""
  handles: dict[str, Any] = {}
  for ax in axes:
    for h, l in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(l, h)
  entry_width = 0.6 + 0.085 * max((len(l) for l in handles), default=0)   # inches at 10 pt: handle + text
  ncol = max(1, min(len(handles), ncol, int(fig.get_size_inches()[0] // entry_width)))
  rows = math.ceil(len(handles) / ncol)
  fig.legend(list(handles.values()), list(handles), loc='lower center', ncol=ncol, frameon=False)
  width, height = fig.get_size_inches()
  legend = 0.3 * rows + 0.1   # inches below the panels: ~0.3 per row of the legend
  fig.set_size_inches(width, height + legend)
  bottom = legend / (height + legend)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, bottom, 1, 1))   # tight_layout leaves room for the suptitle
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def boundary_setting(b: dict, sep: str = ', ') -> str:
  """'release protocol, 50 steps, 1000 images × 5 repeats' (``sep`` before the images)."""
  return f'{b["protocol"]} protocol, {b["steps"]} steps{sep}{b["num_images"]} images × {b["repeats"]} repeats'


def _boundary_panel(ax, agg: dict, colors: dict[str, str]) -> None:
  """Bars of the Boundary score (mean ± SEM over seeds); below each, the images without a start
  and not adversarial (summed over seeds and repeats)."""
  items = [(label, e['boundary']) for label, e in agg.items() if 'boundary' in e]
  xs = np.arange(len(items))
  for x, (label, b) in zip(xs, items):
    m, s = b['score']['mean'], b['score']['sem']
    if m is None:   # a seed with a repeat where no image was attacked successfully
      ax.text(x, 0.05, 'no score\n(see\nrobustness.md)', transform=ax.get_xaxis_transform(), ha='center',
              va='bottom', fontsize=8, color=colors[label])
      continue
    ax.bar(x, m, yerr=s, color=colors[label], capsize=4)
  ax.set_xlim(-0.6, len(items) - 0.4)
  ticks = []
  for short, (_, b) in zip(short_labels([l for l, _ in items]), items):
    excluded = [f'\n{what} {b[k]}' for k, what in (('no_start', 'no start'), ('not_adversarial', 'not adv.')) if k in b]
    ticks.append(short + ''.join(excluded) + (f'\nof {b["attacked"]}' if excluded else ''))
  ax.set_xticks(xs)
  ax.set_xticklabels(ticks, fontsize=7)
  ax.set_ylabel('Boundary score ‖δ‖²/D')
  ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
  settings = {boundary_setting(b, '\n') for _, b in items}
  ax.set_title(settings.pop() if len(settings) == 1 else 'settings differ (robustness.md)', fontsize=9)
  ax.grid(alpha=0.3, axis='y')


def plot(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """The paper's figure: accuracy vs level per noise attack and transferred FGSM (mean line, ± SEM
  band per model), and the Boundary score bars. False (nothing written) without such results."""
  attacks = attack_order(agg, pgd=False)
  has_boundary = any('boundary' in e for e in agg.values())
  panels = len(attacks) + int(has_boundary)
  if not panels:
    return False
  plt = _pyplot()
  # The Boundary panel widens with the models: ~0.8 inch per bar and its tick label.
  bars = sum('boundary' in e for e in agg.values())
  ratios = [1.0] * len(attacks) + ([max(1.0, 0.25 * bars)] if has_boundary else [])
  fig, axes = plt.subplots(1, panels, figsize=(4 * sum(ratios), 4.1), squeeze=False,
                           gridspec_kw={'width_ratios': ratios})
  colors = _colors(plt, agg)
  for ax, (name, a) in zip(axes[0], attacks):
    _curve_panel(ax, agg, name, colors, attack_title(name, a))
  if has_boundary:
    _boundary_panel(axes[0][-1], agg, colors)
  _save(fig, axes[0], path, titled(title, agg))
  plt.close(fig)
  return True


def plot_whitebox(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """White-box PGD: a panel per variant (accuracy vs ε, mean line and ± SEM band per model), a row
  per norm. False (nothing written) without PGD results."""
  attacks = attack_order(agg, pgd=True)
  if not attacks:
    return False
  rows: dict[str, list[tuple[str, dict]]] = {}
  for name, a in attacks:
    rows.setdefault(a['settings']['norm'], []).append((name, a))
  ncols = max(len(r) for r in rows.values())
  plt = _pyplot()
  fig, axes = plt.subplots(len(rows), ncols, figsize=(4 * ncols, 3.3 * len(rows) + 0.5), squeeze=False)
  colors = _colors(plt, agg)
  for row, items in zip(axes, rows.values()):
    for ax, (name, a) in zip(row, items):
      _curve_panel(ax, agg, name, colors, attack_title(name, a).removeprefix('White-box '))
    for ax in row[len(items):]:
      ax.axis('off')
  heading = 'White-box PGD: accuracy vs ε, mean ± SEM over seeds'
  _save(fig, axes.ravel(), path, f'{titled(title, agg)}: {heading}')
  plt.close(fig)
  return True


def plot_corruptions(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """Grouped bars: per corruption (and their mean), each model's accuracy averaged over severities,
  mean ± SEM over seeds. False (nothing written) without corruption results."""
  models = [(label, e['corruptions']) for label, e in agg.items() if 'corruptions' in e]
  if not models:
    return False
  names = list(dict.fromkeys(n for _, c in models for n in c['accuracy']))
  plt = _pyplot()
  colors = _colors(plt, agg)
  groups = len(names) + 1
  width = 0.8 / len(models)
  fig, ax = plt.subplots(figsize=(max(8.0, 0.25 * groups * len(models) + 2), 4.2))
  xs = np.arange(groups)
  for i, (label, c) in enumerate(models):
    cells = [c['accuracy'].get(n, {'mean': np.nan, 'sem': 0.0}) for n in names] + [c.get('mean_accuracy')]
    m = [np.nan if v is None else v['mean'] for v in cells]
    s = [0.0 if v is None else v['sem'] for v in cells]
    errors = c.get('errors', {})
    note = ', baseline' if agg[label].get('is_baseline') else (
        f', mCE {errors["mce"]:.3f}' if isinstance(errors.get('mce'), float) and math.isfinite(errors['mce']) else '')
    ax.bar(xs - 0.4 + width * (i + 0.5), m, width, yerr=s, color=colors[label], capsize=2,
           label=f'{label} (n={agg[label]["n"]}{note})', error_kw={'elinewidth': 0.8})
  ax.set_xticks(xs)
  ax.set_xticklabels([n.replace('_', ' ') for n in names] + ['mean'], rotation=45, ha='right')
  ax.axvline(groups - 1.5, color='0.6', lw=0.8)
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy (mean over severities)')
  ax.grid(alpha=0.3, axis='y')
  variants = {c['variant'] for _, c in models}
  images = {str(c['num_images']) for _, c in models}
  heading = f'{" / ".join(sorted(variants))}, {" / ".join(sorted(images))} images: accuracy, mean ± SEM over seeds'
  _save(fig, [ax], path, f'{titled(title, agg)}: {heading}', ncol=2)
  plt.close(fig)
  return True


def _decision_panel(ax, agg: dict, name: str, colors: dict[str, str]) -> None:
  """HopSkipJump ``name``: the median distance vs query budget, mean ± SEM over seeds per model
  (log axes; a budget where a seed had no success is left out)."""
  norm, budgets = '', set()
  for label, e in agg.items():
    if name not in e:
      continue
    h = e[name]
    budgets.update(h['budgets'])
    norm = NORM_NAMES.get(h['norm'], h['norm'])
    pts = [(b, c['mean'], c['sem']) for b, c in zip(h['budgets'], h['median']) if c['mean'] is not None]
    if pts:
      b, m, s = map(np.asarray, zip(*pts))
      ax.errorbar(b, m, yerr=s, color=colors[label], marker='o', capsize=3, label=f'{label} (n={e["n"]})')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xticks(sorted(budgets), [str(b) for b in sorted(budgets)])   # the budgets, not every decade's minor ticks
  ax.xaxis.set_minor_formatter('')
  ax.set_xlabel(f'HopSkipJump {norm}: query budget')
  ax.set_ylabel(f'median {"‖δ‖₂/√D" if norm == "L2" else "‖δ‖∞"}, [0, 1] units (higher = more robust)')
  ax.grid(alpha=0.3, which='both')


def plot_blackbox(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """The black-box attacks beyond the paper's Boundary: a panel per Square curve (accuracy vs ε
  per norm, accuracy vs queries) and per HopSkipJump norm (median distance vs budget), mean ± SEM
  over seeds per model. False (nothing written) without such results."""
  squares = square_order(agg)
  decisions = entries_of(agg, 'budgets')
  panels = len(squares) + len(decisions)
  if not panels:
    return False
  plt = _pyplot()
  ncols = min(panels, 3)
  nrows = math.ceil(panels / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.4 * nrows + 0.5), squeeze=False)
  colors = _colors(plt, agg)
  flat = list(axes.ravel())
  for ax, (name, a) in zip(flat, squares):
    _curve_panel(ax, agg, name, colors, attack_title(name, a))
  for ax, name in zip(flat[len(squares):], decisions):
    _decision_panel(ax, agg, name, colors)
  for ax in flat[panels:]:
    ax.axis('off')
  _save(fig, flat[:panels], path, f'{titled(title, agg)}: black-box attacks, mean ± SEM over seeds')
  plt.close(fig)
  return True


def plot_certified(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """Randomized smoothing: certified accuracy vs L2 radius, a panel per σ (mean line and ± SEM band
  per model). False (nothing written) without such results."""
  names = entries_of(agg, 'certified_accuracy')
  if not names:
    return False
  name = names[0]
  sigmas = list(dict.fromkeys(c['sigma'] for e in agg.values() if name in e for c in e[name]['certified_accuracy']))
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(sigmas), figsize=(4 * len(sigmas), 3.8), squeeze=False)
  colors = _colors(plt, agg)
  settings = set()
  for ax, sigma in zip(axes[0], sigmas):
    for label, e in agg.items():
      c = next((c for c in e.get(name, {}).get('certified_accuracy', []) if c['sigma'] == sigma), None)
      if c is None:
        continue
      r, m, s = (np.asarray(v, np.float64) for v in (e[name]['radii'], c['mean'], c['sem']))
      ax.plot(r, m, color=colors[label], label=f'{label} (n={e["n"]})')
      ax.fill_between(r, m - s, m + s, color=colors[label], alpha=0.25)
      settings.add(f'n = {e[name]["n"]}, α = {e[name]["alpha"]:g}, {e[name]["num_images"]} images')
    ax.set_title(f'σ = {sigma:g}', fontsize=10)
    ax.set_xlabel('L2 radius r')
    ax.set_ylabel('certified accuracy')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  heading = f'certified accuracy (randomized smoothing, {" / ".join(sorted(settings))}), mean ± SEM over seeds'
  _save(fig, axes[0], path, f'{titled(title, agg)}: {heading}')
  plt.close(fig)
  return True
