r"""Aggregates evaluated runs into figures and markdown tables: the paper's Fig. 2/3, white-box PGD
with its gradient-masking checks, and common corruptions with the mean corruption error.

    python -m pixelreg_jax.report --workdirs=runs/base_s0,runs/base_s1,runs/reg_s0,runs/reg_s1 \
        --out=docs/results/fashion

Each workdir must hold ``robustness.json`` (``pixelreg_jax.evaluate``). Runs are grouped into
models by their regularization settings (or by ``--labels``, one per workdir); every seed of
every run in a group is one sample. Every number is the mean over a model's seeds ± one
standard error of the mean, SEM = s/√n (s with n − 1 degrees of freedom,
``attacks.masking.mean_sem``): a band around a curve, an error bar on a bar. Writes into ``--out``:

  robustness.png              noise attacks, transferred FGSM and the Boundary score (Fig. 2/3)
  robustness_whitebox.png     white-box PGD, a panel per variant, a row per norm    (if evaluated)
  robustness_corruptions.png  accuracy per corruption, mean over severities         (if evaluated)
  robustness.md               the tables (sections: ``markdown_report``)
  summary.json                the aggregate (``aggregate``), strict JSON: null where undefined

Boundary attack: a seed's score is the mean over repeats of the median ‖δ‖²/D over the images
attacked successfully (higher = more robust; NaN when a repeat had no success, as in the
release); a model shows the mean ± SEM of its seeds' scores (undefined if a seed has none), the
protocol, steps, images and repeats, and how many images had no start or were not adversarial,
summed over seeds and repeats. Records of the old evaluation (``median_distance``, before the
release protocol) are refused with one line: their numbers come from another attack.

Gradient-masking checks (``attacks.masking.gradient_masking_checks``) run on each model's pooled
record: its runs' seeds concatenated attack by attack in the same run order, so the seed-paired
differences stay paired and every seed of the model counts (the one-image tolerance uses the
smallest image count of its runs). A model of several runs also lists the checks that fail in any
single run. A failed check is printed as **FAILED**, never left out.

Against the baseline (``--baseline``; default: the only model whose runs all have α = 0): every
other model's white-box comparison (``masking.compare_models``), and for every model the corruption
errors of Hendrycks & Dietterich (``attacks.corruptions``): CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}
(E = 1 − the seed-mean accuracy at severity s), mCE = mean_c CE_c, and the relative CE and mCE with
each model's clean error subtracted from its errors.

A run is counted once: a workdir listed twice (by any path spelling) is read once, with a
warning; two different workdirs holding the same run (same seeds and config, e.g. a copy) are
refused, since pooling them would count each seed twice and shrink the SEM. Runs pooled into one
model must have been evaluated alike (same levels, PGD settings, Boundary protocol, corruption
set), else the report says which differ.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import flags, logging

from pixelreg_jax import cli
from pixelreg_jax.errors import ReportError

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_list('workdirs', None, 'Evaluated run directories.')
  flags.register_validator('workdirs', bool, '--workdirs needs at least one run directory')
  flags.DEFINE_list('labels', None, 'Optional model label per workdir (runs with equal labels are pooled).')
  flags.DEFINE_string('out', None, 'Output directory (default: the first workdir).')
  flags.DEFINE_string('title', None, 'Figure title.')
  flags.DEFINE_string('baseline', None, 'Label of the model the others are compared with (mCE, white-box PGD); '
                      'default: the only model whose runs all have α=0.')
  flags.DEFINE_bool('grid', False, 'Tabulate a hyper-parameter grid (one run per setting, one of them α=0) and '
                    'select a setting: grid.md, grid.json.')
  flags.DEFINE_string('robustness_file', 'robustness.json', 'The evaluation file to read in each workdir.')
  flags.DEFINE_float('max_accuracy_drop', 0.02, 'Grid selection: the largest clean-accuracy loss against α=0.')


ATTACK_TITLES = {'gaussian': 'Gaussian noise σ', 'uniform': 'Uniform noise ε', 'salt_pepper': 'Salt & pepper p',
                 'fgsm': 'Transferred FGSM ε'}
NORM_NAMES = {'linf': 'L∞', 'l2': 'L2'}


def _attack_libs():
  """(``attacks.masking``, ``attacks.corruptions``), imported when first needed: the attacks
  package imports JAX, which the report's command line loads only once its inputs were read."""
  from pixelreg_jax.attacks import corruptions, masking  # pylint: disable=import-outside-toplevel
  return masking, corruptions


def _mean_sem(samples) -> dict:
  """{'mean', 'sem'} over axis 0 of ``samples`` [n, ...] (``masking.mean_sem``), as lists (floats for [n])."""
  mean, sem = _attack_libs()[0].mean_sem(samples)
  return {'mean': mean.tolist(), 'sem': sem.tolist()}


def json_strict(obj: Any) -> Any:
  """``obj`` with NaN and ±inf as None and NumPy values as Python ones (for ``allow_nan=False``)."""
  if isinstance(obj, dict):
    return {str(k): json_strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_strict(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return json_strict(obj.tolist())
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def _write_json(path: str, obj: Any) -> None:
  with open(path, 'w') as f:
    json.dump(json_strict(obj), f, indent=2, allow_nan=False)


def default_label(record: dict) -> str:
  if not record['alpha']:
    return 'unregularized'
  th = record['threshold']
  target = 'S^pixel' if not th else f'Th={th:g}'
  return f'regularized (α={record["alpha"]:g}, {target}, by {record["reg_dataset"]})'


# config.json fields that do not change the trained model (they may differ between copies).
_NOT_THE_MODEL = ('data_dir', 'download', 'log_every_steps', 'tensorboard', 'eval_batch_size', 'tfds_manual_dir')


def unique_workdirs(workdirs: Sequence[str]) -> list[str]:
  """``workdirs`` without repeats of the same directory (by real path); each repeat is logged."""
  out, seen = [], {}
  for w in workdirs:
    key = os.path.realpath(w)
    if key in seen:
      logging.warning('%s is listed twice (as %s and %s); counting it once', key, seen[key], w)
      continue
    seen[key] = w
    out.append(w)
  return out


def _identity(workdir: str, record: dict) -> tuple:
  """What makes a run the same run: its seeds and its config.json (without the fields that do
  not change the model), or, without config.json, its seeds and its evaluation results."""
  path = os.path.join(workdir, 'config.json')
  if os.path.isfile(path):
    with open(path) as f:
      config = json.load(f)
    what = json.dumps({k: v for k, v in config.items() if k not in _NOT_THE_MODEL}, sort_keys=True)
  else:
    what = json.dumps({'attacks': record.get('attacks'), 'boundary': record.get('boundary')}, sort_keys=True)
  return tuple(record.get('seeds', [])), record.get('dataset'), what


def load_records(workdirs: Sequence[str], filename: str = 'robustness.json') -> list[dict]:
  """The evaluation record of each run, a workdir listed twice read once.

  Raises:
    ReportError: an evaluation is missing, unreadable or of the old format (a Boundary result
      without 'score'), or two workdirs hold the same run.
  """
  records, identities = [], {}
  for w in unique_workdirs(workdirs):
    path = os.path.join(w, filename)
    if not os.path.isfile(path):
      raise ReportError(f'{path} is missing; run python -m pixelreg_jax.evaluate --workdir={w} first')
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      raise ReportError(f'{path} is unreadable ({type(e).__name__}: {e}); evaluate {w} again') from e
    if 'score' not in record.get('boundary', {'score': None}):
      raise ReportError(f'{path} holds a Boundary result of the old evaluation (median_distance, before the '
                        f'release protocol); evaluate again: python -m pixelreg_jax.evaluate --workdir={w} '
                        '--attacks=...,boundary')
    ident = _identity(w, record)
    if ident in identities:
      raise ReportError(f'{identities[ident]} and {w} hold the same run (seeds {list(ident[0])}, same config); '
                        'list each run once, or its seeds count twice')
    identities[ident] = w
    records.append(record)
  return records


# ---------------------------------------------------------------------------------------
# Pooling the runs of a model.
# ---------------------------------------------------------------------------------------


def _one_or_all(values: Sequence) -> Any:
  """The value all runs share, else the list of the runs' values (e.g. differing image counts)."""
  values = list(values)
  return values[0] if all(v == values[0] for v in values[1:]) else values


def _agree(label: str, what: str, values: Sequence, close: bool = False) -> Any:
  """The value every run of model ``label`` has for ``what``; ReportError if they differ."""
  first = values[0]
  same = (lambda v: np.shape(v) == np.shape(first) and np.allclose(v, first)) if close else (lambda v: v == first)
  if not all(same(v) for v in values[1:]):
    raise ReportError(f'the runs of {label!r} differ in {what} ({" vs ".join(map(str, values))}); pool only runs '
                      'evaluated alike, or give them different --labels')
  return first


def pooled_record(records: Sequence[dict], label: str = 'model') -> dict:
  """One robustness record for the runs of a model: their seeds concatenated in run order.

  Kept: the attacks every run has ({'levels', 'accuracy' [K, L], 'settings'?, 'num_images'?}),
  'clean_accuracy' [K], 'boundary' (per-seed lists concatenated) and 'corruptions' (the
  corruptions every run has, 'accuracy' {name: [K, S]}) where every run has them; 'num_images'
  is the smallest of the runs' (``attacks.masking``'s one-image tolerance), 'num_classes' shared.
  K = the model's seeds; 'images_per_seed' [K] the evaluated images of each seed's run.

  Raises:
    ReportError: the runs were evaluated differently (levels, PGD settings, Boundary protocol,
      steps or repeats, corruption variant or severities, number of classes).
  """
  rs = list(records)
  pooled: dict[str, Any] = {'workdir': [r['workdir'] for r in rs], 'alpha': _one_or_all([r['alpha'] for r in rs]),
                            'seeds': [s for r in rs for s in r['seeds']],
                            'images_per_seed': [r.get('num_images') for r in rs for _ in r['seeds']],
                            'num_images': min((r['num_images'] for r in rs if r.get('num_images')), default=None),
                            'num_classes': _agree(label, 'num_classes', [r.get('num_classes', 10) for r in rs]),
                            'attacks': {}}
  for name in [n for n in rs[0]['attacks'] if all(n in r['attacks'] for r in rs)]:
    entries = [r['attacks'][name] for r in rs]
    entry = {'levels': _agree(label, f'the levels of {name}', [e['levels'] for e in entries], close=True),
             'accuracy': [row for e in entries for row in e['accuracy']]}
    if any('settings' in e for e in entries):
      entry['settings'] = _agree(label, f'the settings of {name}', [e.get('settings') for e in entries])
    if any('num_images' in e for e in entries):
      entry['num_images'] = _one_or_all([e.get('num_images') for e in entries])
    pooled['attacks'][name] = entry
  if all('clean_accuracy' in r for r in rs):
    pooled['clean_accuracy'] = [a for r in rs for a in r['clean_accuracy']]
  if all('boundary' in r for r in rs):
    bs = [r['boundary'] for r in rs]
    b = {k: _agree(label, f'the Boundary {k}', [x.get(k) for x in bs]) for k in ('protocol', 'steps', 'repeats')}
    b['num_images'] = _one_or_all([x['num_images'] for x in bs])
    b['images_per_seed'] = [x['num_images'] for x, r in zip(bs, rs) for _ in r['seeds']]
    for k in ('score', 'median_per_repeat', 'no_start', 'not_adversarial', 'successful'):
      if all(k in x for x in bs):
        b[k] = [v for x in bs for v in x[k]]
    pooled['boundary'] = b
  if all('corruptions' in r for r in rs):
    cs = [r['corruptions'] for r in rs]
    names = [c for c in cs[0]['accuracy'] if all(c in x['accuracy'] for x in cs)]
    pooled['corruptions'] = {
        'variant': _agree(label, 'the corruption variant', [x['variant'] for x in cs]),
        'num_images': _one_or_all([x.get('num_images') for x in cs]),
        'severities': {c: _agree(label, f'the severities of {c}', [x['severities'][c] for x in cs]) for c in names},
        'accuracy': {c: [row for x in cs for row in x['accuracy'][c]] for c in names}}
  return pooled


# ---------------------------------------------------------------------------------------
# The aggregate: one entry per model.
# ---------------------------------------------------------------------------------------


def _boundary_entry(b: dict) -> dict:
  """Mean ± SEM of the per-seed scores, and the excluded images summed over seeds and repeats."""
  scores = np.asarray(b['score'], np.float64)   # [K]
  defined = np.isfinite(scores)
  out = {k: b[k] for k in ('protocol', 'steps', 'repeats', 'num_images')}
  out['score'] = _mean_sem(scores) if defined.all() else {'mean': None, 'sem': None}
  out['score_per_seed'] = scores.tolist()
  out['seeds_without_score'] = int((~defined).sum())
  out['attacked'] = int(b['repeats'] * sum(b['images_per_seed']))   # images × repeats × seeds
  for k in ('no_start', 'not_adversarial', 'successful'):
    if k in b:
      per_seed = [int(np.sum(v)) for v in b[k]]   # each seed: [R] counts
      out[k], out[f'{k}_per_seed'] = int(sum(per_seed)), per_seed
  return out


def _corruption_entry(c: dict) -> dict:
  """Per corruption: mean over severities per seed, then mean ± SEM over seeds; per severity too."""
  acc = {name: np.atleast_2d(np.asarray(a, np.float64)) for name, a in c['accuracy'].items()}   # [K, S]
  out = {k: c[k] for k in ('variant', 'num_images', 'severities')}
  out['accuracy'] = {name: {**_mean_sem(a.mean(1)), 'per_severity': _mean_sem(a)} for name, a in acc.items()}
  if acc:
    out['mean_accuracy'] = _mean_sem(np.mean([a.mean(1) for a in acc.values()], axis=0))
  return out


def model_entry(records: Sequence[dict], label: str = 'model', pooled: Optional[dict] = None) -> dict:
  """The aggregate of one model's runs (``pooled``: their ``pooled_record``): see ``aggregate``."""
  masking, _ = _attack_libs()
  p = pooled or pooled_record(records, label)
  entry: dict[str, Any] = {'n': len(p['seeds']), 'workdirs': p['workdir'], 'alpha': p['alpha'], 'attacks': {}}
  if 'clean_accuracy' in p:
    entry['clean_accuracy'] = _mean_sem(p['clean_accuracy'])
  checkpoints = [dict(r['checkpoint'], workdir=r['workdir']) for r in records if r.get('checkpoint')]
  if checkpoints:
    entry['checkpoints'] = checkpoints
  for name, a in p['attacks'].items():
    entry['attacks'][name] = {'levels': a['levels'], **_mean_sem(a['accuracy']),
                              **{k: a[k] for k in ('settings', 'num_images') if k in a}}
  if 'boundary' in p:
    entry['boundary'] = _boundary_entry(p['boundary'])
  if 'corruptions' in p:
    entry['corruptions'] = _corruption_entry(p['corruptions'])
  if masking.pgd_attacks(p):
    entry['gradient_masking_checks'] = masking.gradient_masking_checks(p)
    if len(records) > 1:
      entry['gradient_masking_failed_per_run'] = {
          r['workdir']: [c['check'] for c in masking.gradient_masking_checks(r) if not c['passed']] for r in records}
  return entry


def _corruption_errors(entry: dict, p: dict, base: dict, base_p: dict, base_label: str) -> dict:
  """CE_c, mCE and (with clean accuracies) the relative ones of ``p`` against ``base_p``."""
  _, corruptions = _attack_libs()
  c, bc = p['corruptions'], base_p['corruptions']
  if c['variant'] != bc['variant']:
    return {'baseline': base_label, 'note': f'not compared: the baseline was evaluated on {bc["variant"]}'}
  names = [n for n in c['accuracy'] if n in bc['accuracy'] and c['severities'][n] == bc['severities'][n]]
  if not names:
    return {'baseline': base_label, 'note': 'not compared: no corruption in common with the baseline'}
  errors = corruptions.mean_errors({n: c['accuracy'][n] for n in names})
  base_errors = corruptions.mean_errors({n: bc['accuracy'][n] for n in names})
  out = {'baseline': base_label, 'compared': names, 'ce': corruptions.corruption_errors(errors, base_errors),
         'mce': corruptions.mean_corruption_error(errors, base_errors)}
  if 'clean_accuracy' in entry and 'clean_accuracy' in base:
    clean = 1.0 - entry['clean_accuracy']['mean'], 1.0 - base['clean_accuracy']['mean']
    out['relative_ce'] = corruptions.corruption_errors(errors, base_errors, *clean)
    out['relative_mce'] = corruptions.mean_corruption_error(errors, base_errors, *clean)
  return out


def baseline_label(groups: dict[str, list[dict]], requested: Optional[str] = None) -> Optional[str]:
  """``requested`` (it must be a model label), else the only model whose runs all have α = 0, else None."""
  if requested is not None:
    if requested not in groups:
      raise ReportError(f'--baseline={requested!r} is not one of the models {list(groups)}')
    return requested
  zero = [label for label, rs in groups.items() if all(not r['alpha'] for r in rs)]
  return zero[0] if len(zero) == 1 else None


def aggregate(records: Sequence[dict], labels: Optional[Sequence[str]] = None,
              baseline: Optional[str] = None) -> dict:
  """One entry per model (runs with equal labels pooled; default labels from the settings).

  Returns {label: {
      'n': seeds, 'workdirs': [...], 'alpha': α (or the runs' list if they differ),
      'clean_accuracy': {'mean', 'sem'}, 'checkpoints': [each run's evaluated checkpoint],
      'attacks': {name: {'levels' [L], 'mean' [L], 'sem' [L], 'settings'? (PGD), 'num_images'?}},
      'boundary': {'protocol', 'steps', 'repeats', 'num_images', 'score': {'mean', 'sem'},
                   'score_per_seed' [K], 'seeds_without_score', 'attacked' (images × repeats × seeds),
                   'no_start', 'not_adversarial', 'successful' (sums), and their '*_per_seed' [K]},
      'corruptions': {'variant', 'num_images', 'severities': {c: [S]},
                      'accuracy': {c: {'mean', 'sem', 'per_severity': {'mean' [S], 'sem' [S]}}},
                      'mean_accuracy': {'mean', 'sem'},
                      'errors': {'baseline', 'compared', 'ce': {c: CE_c}, 'mce', 'relative_ce', 'relative_mce'}},
      'gradient_masking_checks': [{'check', 'passed', 'detail'}] (pooled record),
      'gradient_masking_failed_per_run': {workdir: [failed checks]} (models of several runs),
      'is_baseline': True (the baseline only),
      'whitebox_vs_baseline': {'baseline': label, 'comparison': masking.compare_models(baseline, model)}}}
  Keys are present where the records have the results. Mean ± SEM are over the model's seeds.
  """
  masking, _ = _attack_libs()
  labels = list(labels) if labels else [default_label(r) for r in records]
  if len(labels) != len(records):
    raise ReportError(f'{len(labels)} labels for {len(records)} workdirs')
  groups: dict[str, list[dict]] = {}
  for label, r in zip(labels, records):
    groups.setdefault(label, []).append(r)
  pooled = {label: pooled_record(rs, label) for label, rs in groups.items()}
  out = {label: model_entry(rs, label, pooled[label]) for label, rs in groups.items()}
  base = baseline_label(groups, baseline)
  if base is None:
    return out
  out[base]['is_baseline'] = True
  base_p = pooled[base]
  for label, rs in groups.items():
    p = pooled[label]
    if 'corruptions' in p and 'corruptions' in base_p:
      out[label]['corruptions']['errors'] = _corruption_errors(out[label], p, out[base], base_p, base)
    if label != base and masking.pgd_attacks(p) and masking.pgd_attacks(base_p):
      try:
        comparison = masking.compare_models(groups[base], rs)
      except ValueError as e:
        raise ReportError(f'{label!r} against the baseline {base!r}: {e}') from e
      if comparison:
        out[label]['whitebox_vs_baseline'] = {'baseline': base, 'comparison': comparison}
  return out


# ---------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _is_pgd(entry: dict) -> bool:
  """White-box PGD, by the rule of ``masking.pgd_attacks``: settings with a norm."""
  return 'norm' in entry.get('settings', {})


def attack_title(name: str, entry: dict) -> str:
  """'Gaussian noise σ', …, or e.g. 'White-box PGD L∞ ε, 40 steps × 5 restarts' from the PGD settings."""
  s = entry.get('settings', {})
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


def _attack_order(agg: dict, pgd: bool) -> list[tuple[str, dict]]:
  """(name, an entry) of every attack of the models: the paper's first, then the others; PGD sorted
  by norm, steps, restarts."""
  found: dict[str, dict] = {}
  for e in agg.values():
    for name, a in e['attacks'].items():
      if _is_pgd(a) == pgd:
        found.setdefault(name, a)
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


def _short_labels(labels: Sequence[str]) -> list[str]:
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
  """Accuracy vs level of attack ``name``: mean line and ± SEM band per model."""
  for label, e in agg.items():
    if name not in e['attacks']:
      continue
    a = e['attacks'][name]
    x, m, s = np.asarray(a['levels']), np.asarray(a['mean']), np.asarray(a['sem'])
    ax.plot(x, m, color=colors[label], label=f'{label} (n={e["n"]})')
    ax.fill_between(x, m - s, m + s, color=colors[label], alpha=0.25)
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
  for short, (_, b) in zip(_short_labels([l for l, _ in items]), items):
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
  attacks = _attack_order(agg, pgd=False)
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
  _save(fig, axes[0], path, title)
  plt.close(fig)
  return True


def plot_whitebox(agg: dict, path: str, title: Optional[str] = None) -> bool:
  """White-box PGD: a panel per variant (accuracy vs ε, mean line and ± SEM band per model), a row
  per norm. False (nothing written) without PGD results."""
  attacks = _attack_order(agg, pgd=True)
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
  _save(fig, axes.ravel(), path, f'{title}: {heading}' if title else heading)
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
  _save(fig, [ax], path, f'{title}: {heading}' if title else heading, ncol=2)
  plt.close(fig)
  return True


# ---------------------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------------------


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
              for c in e.get('checkpoints', [])]
    alpha = e['alpha'] if isinstance(e['alpha'], list) else f'{e["alpha"]:g}'
    rows.append([label + (' (baseline)' if e.get('is_baseline') else ''), len(e['workdirs']), e['n'], alpha,
                 _pm(e.get('clean_accuracy')), ', '.join(epochs) or '–'])
  lines = ['## Models', ''] + _table(['model', 'runs', 'n (seeds)', 'α', 'clean accuracy', 'checkpoint epoch'], rows)
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
    rows = [(label, e['attacks'][name], e['n']) for label, e in agg.items() if name in e['attacks']]
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
  masking, _ = _attack_libs()
  attacks = _attack_order(agg, pgd=True)
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

    # <title>
    ## Models                 model | runs | n | α | clean accuracy | checkpoint epoch; the baseline
    ## Paper attacks          a table per noise attack / transferred FGSM (model × level), then the
                              Boundary table (score, protocol, steps, images × repeats, no start,
                              not adversarial)
    ## White-box PGD          a table per variant (model × ε); each model against the baseline
                              (``masking.comparison_markdown``)
    ## Gradient-masking checks  per model a verdict line and check | result | detail (**FAILED**)
    ## Common corruptions     corruption | severities | accuracy per model, a mean row; the CE per
                              corruption, mCE and relative mCE per model against the baseline
  """
  lines = [f'# {title or "Robustness report"}', ''] + _models_section(agg)
  paper = _curve_tables(agg, _attack_order(agg, pgd=False)) + _boundary_section(agg)
  if paper:
    lines += ['## Paper attacks (robustness.png)', ''] + paper
  lines += _whitebox_section(agg) + _masking_section(agg) + _corruption_section(agg)
  return '\n'.join(lines).rstrip('\n') + '\n'


def write_report(workdirs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                 title: Optional[str] = None, filename: str = 'robustness.json',
                 baseline: Optional[str] = None) -> dict:
  """Aggregates, plots and tabulates the runs in ``workdirs`` (module docstring); returns the aggregate."""
  if labels and len(labels) != len(workdirs):
    raise ReportError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  if labels:   # keep each label with its workdir when a repeated workdir is dropped
    kept = unique_workdirs(workdirs)
    labels = [labels[list(workdirs).index(w)] for w in kept]
    workdirs = kept
  agg = aggregate(load_records(workdirs, filename), labels, baseline)
  os.makedirs(out, exist_ok=True)
  figures: list[tuple[str, Callable[..., bool]]] = [
      ('robustness.png', plot), ('robustness_whitebox.png', plot_whitebox),
      ('robustness_corruptions.png', plot_corruptions)]
  written = []
  for name, fn in figures:
    path = os.path.join(out, name)
    if fn(agg, path, title):
      written.append(name)
    elif os.path.isfile(path):   # from an earlier report of other runs: it would not match the tables
      os.remove(path)
      logging.info('removed %s: these runs have no results for it', path)
  with open(os.path.join(out, 'robustness.md'), 'w') as f:
    f.write(markdown_report(agg, title))
  _write_json(os.path.join(out, 'summary.json'), agg)
  logging.info('report in %s: %s, robustness.md, summary.json', out, ', '.join(written))
  return agg


NOISE = ('gaussian', 'uniform', 'salt_pepper')


def grid(records: Sequence[dict], max_accuracy_drop: float = 0.02) -> dict:
  """Rows (α, Th, clean accuracy, mean accuracy over the levels of each noise attack, score) and
  the selected setting: the highest score — the mean of the noise attacks' means — among the
  regularized settings whose clean accuracy is at most ``max_accuracy_drop`` below α=0's."""
  rows = []
  for r in records:
    row = {'alpha': r['alpha'], 'threshold': r['threshold'], 'workdir': r['workdir'],
           'clean_accuracy': float(np.mean(r['clean_accuracy']))}
    for name in NOISE:
      if name in r['attacks']:
        row[name] = float(np.mean(r['attacks'][name]['accuracy']))
    row['score'] = float(np.mean([row[n] for n in NOISE if n in row]))
    rows.append(row)
  baselines = [row for row in rows if not row['alpha']]
  if len(baselines) != 1:
    raise ReportError(f'a grid needs exactly one α=0 run, got {len(baselines)}')
  floor = baselines[0]['clean_accuracy'] - max_accuracy_drop
  eligible = [row for row in rows if row['alpha'] and row['clean_accuracy'] >= floor]
  selected = max(eligible, key=lambda row: row['score']) if eligible else None
  return {'rows': sorted(rows, key=lambda r: (r['alpha'], r['threshold'])), 'selected': selected,
          'max_accuracy_drop': max_accuracy_drop, 'baseline_clean_accuracy': baselines[0]['clean_accuracy']}


def grid_table(g: dict) -> str:
  lines = ['| α | Th | clean acc. | Gaussian | uniform | salt & pepper | score | |',
           '|---|---|---|---|---|---|---|---|']
  for r in g['rows']:
    mark = '**selected**' if g['selected'] and r['workdir'] == g['selected']['workdir'] else ''
    if r['alpha'] and r['clean_accuracy'] < g['baseline_clean_accuracy'] - g['max_accuracy_drop']:
      mark = f'clean acc. more than {g["max_accuracy_drop"]:.0%} below α=0'
    lines.append(f'| {r["alpha"]:g} | {r["threshold"]:g} | {r["clean_accuracy"]:.3f} | '
                 + ' | '.join(f'{r.get(n, float("nan")):.3f}' for n in NOISE) + f' | {r["score"]:.3f} | {mark} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  out = FLAGS.out or FLAGS.workdirs[0]
  if FLAGS.grid:
    g = grid(load_records(FLAGS.workdirs, FLAGS.robustness_file), FLAGS.max_accuracy_drop)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'grid.md'), 'w') as f:
      f.write(grid_table(g))
    _write_json(os.path.join(out, 'grid.json'), g)
    print(json.dumps(json_strict({'out': os.path.abspath(out), 'selected': g['selected']})), flush=True)
    return
  agg = write_report(FLAGS.workdirs, out, FLAGS.labels, FLAGS.title, FLAGS.robustness_file, FLAGS.baseline)
  figures = [os.path.join(os.path.abspath(out), f) for f in ('robustness.png', 'robustness_whitebox.png',
                                                              'robustness_corruptions.png')]
  print(json.dumps({'out': os.path.abspath(out), 'models': {k: v['n'] for k, v in agg.items()},
                    'plots': [f for f in figures if os.path.isfile(f)]}), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
