"""A hyper-parameter grid (one run per setting, one of them α=0): the table and the selected setting.

    python -m pixelreg_jax.report --grid --workdirs=runs/grid/a0_th0,runs/grid/a4_th0.8,… --out=DIR

writes grid.md (``grid_table``) and grid.json (``grid``), strict JSON.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pixelreg_jax import jsonio
from pixelreg_jax.errors import ReportError
from pixelreg_jax.report.records import load_records

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
      if r['results'].get(name, {}).get('kind') == 'curve':
        row[name] = float(np.mean(r['results'][name]['accuracy']))
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
  """grid.md: a row per setting; the selected one, and those too far below α=0's clean accuracy, marked."""
  lines = ['| α | Th | clean acc. | Gaussian | uniform | salt & pepper | score | |',
           '|---|---|---|---|---|---|---|---|']
  for r in g['rows']:
    mark = '**selected**' if g['selected'] and r['workdir'] == g['selected']['workdir'] else ''
    if r['alpha'] and r['clean_accuracy'] < g['baseline_clean_accuracy'] - g['max_accuracy_drop']:
      mark = f'clean acc. more than {g["max_accuracy_drop"]:.0%} below α=0'
    lines.append(f'| {r["alpha"]:g} | {r["threshold"]:g} | {r["clean_accuracy"]:.3f} | '
                 + ' | '.join(f'{r.get(n, float("nan")):.3f}' for n in NOISE) + f' | {r["score"]:.3f} | {mark} |')
  return '\n'.join(lines) + '\n'


def write_grid(workdirs: Sequence[str], out: str, filename: str = 'robustness.json',
               max_accuracy_drop: float = 0.02) -> dict:
  """grid.md and grid.json of the runs in ``workdirs`` into ``out``; returns the grid."""
  g = grid(load_records(workdirs, filename), max_accuracy_drop)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'grid.md'), 'w') as f:
    f.write(grid_table(g))
  jsonio.write(os.path.join(out, 'grid.json'), g)
  return g
