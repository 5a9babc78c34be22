r"""Aggregates evaluated runs into the paper's figures (Fig. 2/3 style) and a markdown table.

    python -m pixelreg_jax.report --workdirs=runs/base_s0,runs/base_s1,runs/reg_s0,runs/reg_s1 \
        --out=docs/results/fashion

Each workdir must hold ``robustness.json`` (``pixelreg_jax.evaluate``). Runs are grouped into
models by their regularization settings (or by ``--labels``, one per workdir); every seed of
every run in a group is one sample. Curves are the mean over seeds with a band of ± one
standard error of the mean, SEM = s/√n (s with n − 1 degrees of freedom).
Writes ``robustness.png``, ``robustness.md`` and ``summary.json`` into ``--out``.

A run is counted once: a workdir listed twice (by any path spelling) is read once, with a
warning; two different workdirs holding the same run (same seeds and config, e.g. a copy) are
refused, since pooling them would count each seed twice and shrink the SEM.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
from absl import flags, logging

from pixelreg_jax import cli

FLAGS = flags.FLAGS


class ReportError(cli.UserError, ValueError):
  """Workdirs that cannot be reported together (missing evaluation, duplicate runs, bad labels)."""


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_list('workdirs', None, 'Evaluated run directories.')
  flags.register_validator('workdirs', bool, '--workdirs needs at least one run directory')
  flags.DEFINE_list('labels', None, 'Optional model label per workdir (runs with equal labels are pooled).')
  flags.DEFINE_string('out', None, 'Output directory (default: the first workdir).')
  flags.DEFINE_string('title', None, 'Figure title.')
  flags.DEFINE_bool('grid', False, 'Tabulate a hyper-parameter grid (one run per setting, one of them α=0) and '
                    'select a setting: grid.md, grid.json.')
  flags.DEFINE_string('robustness_file', 'robustness.json', 'The evaluation file to read in each workdir.')
  flags.DEFINE_float('max_accuracy_drop', 0.02, 'Grid selection: the largest clean-accuracy loss against α=0.')


ATTACK_TITLES = {'gaussian': 'Gaussian noise σ', 'uniform': 'Uniform noise ε', 'salt_pepper': 'Salt & pepper p',
                 'fgsm': 'Transferred FGSM ε'}


def mean_sem(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error of the mean over ``axis`` (SEM = 0 for a single sample)."""
  samples = np.asarray(samples, np.float64)
  n = samples.shape[axis]
  mean = samples.mean(axis=axis)
  if n < 2:
    return mean, np.zeros_like(mean)
  return mean, samples.std(axis=axis, ddof=1) / np.sqrt(n)


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
    ReportError: an evaluation is missing or unreadable, or two workdirs hold the same run.
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
    ident = _identity(w, record)
    if ident in identities:
      raise ReportError(f'{identities[ident]} and {w} hold the same run (seeds {list(ident[0])}, same config); '
                        'list each run once, or its seeds count twice')
    identities[ident] = w
    records.append(record)
  return records


def aggregate(records: Sequence[dict], labels: Optional[Sequence[str]] = None) -> dict:
  """{label: {'n': seeds, 'attacks': {name: {'levels', 'mean', 'sem'}}, 'boundary': {...}}}."""
  labels = list(labels) if labels else [default_label(r) for r in records]
  if len(labels) != len(records):
    raise ReportError(f'{len(labels)} labels for {len(records)} workdirs')
  groups: dict[str, list[dict]] = {}
  for label, r in zip(labels, records):
    groups.setdefault(label, []).append(r)
  out = {}
  for label, rs in groups.items():
    entry = {'n': sum(len(r['seeds']) for r in rs), 'workdirs': [r['workdir'] for r in rs], 'attacks': {}}
    names = [n for n in rs[0]['attacks'] if all(n in r['attacks'] for r in rs)]
    for name in names:
      acc = np.concatenate([np.asarray(r['attacks'][name]['accuracy']) for r in rs])   # [seeds, L]
      mean, sem = mean_sem(acc)
      entry['attacks'][name] = {'levels': rs[0]['attacks'][name]['levels'], 'mean': mean.tolist(),
                                'sem': sem.tolist()}
    if all('boundary' in r for r in rs):
      med = np.concatenate([np.asarray(r['boundary']['median_distance'], np.float64) for r in rs])
      # A seed whose median is inf (most images never got a starting adversarial) makes the
      # model's mean inf; its SEM is then undefined.
      mean, sem = mean_sem(med) if np.all(np.isfinite(med)) else (np.inf, np.nan)
      entry['boundary'] = {'mean': float(mean), 'sem': float(sem), 'steps': rs[0]['boundary']['steps']}
    out[label] = entry
  return out


def plot(agg: dict, path: str, title: Optional[str] = None) -> None:
  """One panel per attack: accuracy vs level, mean line and ± SEM band per model."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  attacks = [a for a in ATTACK_TITLES if any(a in e['attacks'] for e in agg.values())]
  attacks += sorted({a for e in agg.values() for a in e['attacks']} - set(attacks))
  has_boundary = any('boundary' in e for e in agg.values())
  panels = len(attacks) + int(has_boundary)
  fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.6), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, name in zip(axes[0], attacks):
    for i, (label, e) in enumerate(agg.items()):
      if name not in e['attacks']:
        continue
      a = e['attacks'][name]
      x, m, s = np.asarray(a['levels']), np.asarray(a['mean']), np.asarray(a['sem'])
      ax.plot(x, m, color=colors[i % len(colors)], label=f'{label} (n={e["n"]})')
      ax.fill_between(x, m - s, m + s, color=colors[i % len(colors)], alpha=0.25)
    ax.set_xlabel(ATTACK_TITLES.get(name, name))
    ax.set_ylabel('accuracy')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  if has_boundary:
    ax = axes[0][-1]
    items = [(label, e['boundary']) for label, e in agg.items()
             if 'boundary' in e and np.isfinite(e['boundary']['mean'])]
    ax.bar(range(len(items)), [b['mean'] for _, b in items], yerr=[b['sem'] for _, b in items],
           color=[colors[list(agg).index(l) % len(colors)] for l, _ in items], capsize=4)
    ax.set_xticks(range(len(items)))
    # Short tick labels (the label's first word, e.g. 'regularized'); colours match the legend.
    ax.set_xticklabels([l.split(' (')[0].split()[0] for l, _ in items])
    ax.set_ylabel('Boundary attack median ‖δ‖²/D')
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 3), frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.1, 1, 0.95 if title else 1))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown_table(agg: dict) -> str:
  """Per attack, accuracy (mean ± SEM) at each level, one row per model."""
  lines = []
  for name in ATTACK_TITLES:
    rows = [(label, e['attacks'][name], e['n']) for label, e in agg.items() if name in e['attacks']]
    if not rows:
      continue
    levels = rows[0][1]['levels']
    lines.append(f'**{ATTACK_TITLES[name]}**\n')
    lines.append('| model | n | ' + ' | '.join(f'{l:.3g}' for l in levels) + ' |')
    lines.append('|---|---|' + '---|' * len(levels))
    for label, a, n in rows:
      cells = ' | '.join(f'{m:.3f} ± {s:.3f}' for m, s in zip(a['mean'], a['sem']))
      lines.append(f'| {label} | {n} | {cells} |')
    lines.append('')
  bound = [(label, e['boundary'], e['n']) for label, e in agg.items() if 'boundary' in e]
  if bound:
    lines.append(f'**Boundary attack ({bound[0][1]["steps"]} steps), median ‖δ‖²/D**\n')
    lines.append('| model | n | median ‖δ‖²/D |')
    lines.append('|---|---|---|')
    for label, b, n in bound:
      lines.append(f'| {label} | {n} | {b["mean"]:.3e} ± {b["sem"]:.1e} |')
    lines.append('')
  return '\n'.join(lines)


def write_report(workdirs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                 title: Optional[str] = None, filename: str = 'robustness.json') -> dict:
  """Aggregates, plots and tabulates the runs in ``workdirs``; returns the aggregate."""
  if labels and len(labels) != len(workdirs):
    raise ReportError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  if labels:   # keep each label with its workdir when a repeated workdir is dropped
    kept = unique_workdirs(workdirs)
    labels = [labels[list(workdirs).index(w)] for w in kept]
    workdirs = kept
  agg = aggregate(load_records(workdirs, filename), labels)
  os.makedirs(out, exist_ok=True)
  plot(agg, os.path.join(out, 'robustness.png'), title)
  with open(os.path.join(out, 'robustness.md'), 'w') as f:
    f.write(markdown_table(agg))
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(agg, f, indent=2)
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
    with open(os.path.join(out, 'grid.json'), 'w') as f:
      json.dump(g, f, indent=2)
    print(json.dumps({'out': os.path.abspath(out), 'selected': g['selected']}), flush=True)
    return
  agg = write_report(FLAGS.workdirs, out, FLAGS.labels, FLAGS.title, FLAGS.robustness_file)
  print(json.dumps({'out': os.path.abspath(out), 'models': {k: v['n'] for k, v in agg.items()},
                    'plot': os.path.join(os.path.abspath(out), 'robustness.png')}), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
