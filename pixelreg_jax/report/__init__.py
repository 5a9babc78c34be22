r"""Aggregates evaluated runs into figures and markdown tables: the paper's Fig. 2/3, white-box PGD
with its gradient-masking checks, and common corruptions with the mean corruption error.

    python -m pixelreg_jax.report --workdirs=runs/base_s0,runs/base_s1,runs/reg_s0,runs/reg_s1 \
        --out=docs/results/fashion

Each workdir must hold ``robustness.json`` (``pixelreg_jax.evaluate``; records of the first format
are upgraded on load). Runs are grouped into models by their regularization settings (or by
``--labels``, one per workdir); every seed of every run in a group is one sample. Every number is
the mean over a model's seeds ± one standard error of the mean, SEM = s/√n (s with n − 1 degrees
of freedom, ``attacks.masking.mean_sem``): a band around a curve, an error bar on a bar. Writes
into ``--out``:

  robustness.png              noise attacks, transferred FGSM and the Boundary score (Fig. 2/3)
  robustness_whitebox.png     white-box PGD, a panel per variant, a row per norm    (if evaluated)
  robustness_corruptions.png  accuracy per corruption, mean over severities         (if evaluated)
  robustness_blackbox.png     Square (accuracy vs ε and vs queries), HopSkipJump (distance vs budget)  (if evaluated)
  robustness_certified.png    randomized smoothing: certified accuracy vs radius, per σ (if evaluated)
  robustness.md               the tables (sections: ``tables.markdown_report``)
  summary.json                the aggregate (``aggregate.aggregate``), strict JSON: null where undefined

The modules: ``records`` (read, upgrade, count each run once), ``aggregate`` (pool each model's
runs, by the result kinds of ``evaluation.registry``; the baseline comparisons), ``figures``,
``tables``, ``grid`` (``--grid``: a hyper-parameter grid and its selected setting). How each kind
pools and what summary.json holds: docs/evaluation.md.

Against the baseline (``--baseline``; default: the only model whose runs all have α = 0): every
other model's white-box comparison, and for every model the corruption errors (CE, mCE). A run is
counted once: a workdir listed twice (by any path spelling) is read once, with a warning; two
different workdirs holding the same run (same seeds and config, e.g. a copy; without config.json
the same numbers) are refused. Runs pooled into one model must differ in their seeds alone (their
config.json, else their records' dataset, α, Th) and have been evaluated alike (same levels, PGD
settings, Boundary protocol, corruption set), else the report says which differ. A record that is
not one (``[]``, a result of the wrong shape) is one line. Every title names the dataset.

Importing the package loads no JAX: the result kinds are imported once the records were read.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from absl import logging

from pixelreg_jax import jsonio
from pixelreg_jax.errors import ReportError
from pixelreg_jax.report.aggregate import aggregate, baseline_label, model_entry, pooled_record
from pixelreg_jax.report.figures import plot, plot_blackbox, plot_certified, plot_corruptions, plot_whitebox
from pixelreg_jax.report.grid import grid, grid_table, write_grid
from pixelreg_jax.report.records import default_label, load_records, unique_workdirs, upgrade
from pixelreg_jax.report.tables import markdown_report

FIGURES: list[tuple[str, Callable[..., bool]]] = [
    ('robustness.png', plot), ('robustness_whitebox.png', plot_whitebox),
    ('robustness_corruptions.png', plot_corruptions), ('robustness_blackbox.png', plot_blackbox),
    ('robustness_certified.png', plot_certified)]


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
  written = []
  for name, fn in FIGURES:
    path = os.path.join(out, name)
    if fn(agg, path, title):
      written.append(name)
    elif os.path.isfile(path):   # from an earlier report of other runs: it would not match the tables
      os.remove(path)
      logging.info('removed %s: these runs have no results for it', path)
  with open(os.path.join(out, 'robustness.md'), 'w') as f:
    f.write(markdown_report(agg, title))
  jsonio.write(os.path.join(out, 'summary.json'), agg)
  logging.info('report in %s: %s, robustness.md, summary.json', out, ', '.join(written))
  return agg


__all__ = ['FIGURES', 'aggregate', 'baseline_label', 'default_label', 'grid', 'grid_table', 'load_records',
           'markdown_report', 'model_entry', 'plot', 'plot_blackbox', 'plot_certified', 'plot_corruptions',
           'plot_whitebox', 'pooled_record', 'unique_workdirs', 'upgrade', 'write_grid', 'write_report']
