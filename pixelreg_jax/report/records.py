"""Reading the evaluation records of the reported runs: each run once, every record in the current format.

``load_records`` reads ``<workdir>/robustness.json`` of every workdir (a workdir listed twice, by
any path spelling, is read once), upgrades records of the first format (``upgrade``) and refuses
two workdirs that hold the same run: same seeds and the same model config
(``rundir.model_fields``), or without config.json the same results. Pooling them would count each
seed twice and shrink the SEM.

Nothing here imports JAX: ``rundir`` (which does) is imported only for a run with a config.json,
after its record was read.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import logging

from pixelreg_jax.errors import ReportError

FORMAT = 2   # the format evaluate writes, evaluation.run.FORMAT (that module imports JAX)


def upgrade(record: dict, path: str = 'the record') -> dict:
  """``record`` in the current format (2): every result in ``record['results'][name]`` with its
  ``'kind'`` and ``'seconds'``.

  Format 1 (no ``'format'`` field) kept the curves in ``'attacks'`` {name: {'levels', 'accuracy',
  …}}, the Boundary result in ``'boundary'``, the corruptions in ``'corruptions'``, the
  gradient-masking checks as a list in ``'gradient_masking_checks'`` and the seconds of each in
  ``'seconds'``; the numbers themselves are unchanged. The upgraded record says
  ``'upgraded_from': 1``.

  Raises:
    ReportError: a Boundary result of the evaluation before format 1 (``median_distance``, no
      ``score``: another attack's numbers), or a format newer than this version reads.
  """
  version = record.get('format', 1)
  if version == FORMAT:
    return record
  if version != 1:
    raise ReportError(f'{path} has record format {version!r}; this version reads formats 1 and {FORMAT}')
  if 'score' not in record.get('boundary', {'score': None}):
    raise ReportError(f'{path} holds a Boundary result of the old evaluation (median_distance, before the '
                      f'release protocol); evaluate again: python -m pixelreg_jax.evaluate '
                      f'--workdir={os.path.dirname(path) or "."} --attacks=...,boundary')
  results = {name: {'kind': 'curve', **entry} for name, entry in record.get('attacks', {}).items()}
  for kind in ('boundary', 'corruptions'):
    if kind in record:
      results[kind] = {'kind': kind, **record[kind]}
  checks = record.get('gradient_masking_checks')
  if checks is not None:
    results['gradient_masking_checks'] = {'kind': 'gradient_masking_checks', 'checks': checks}
  for name, seconds in record.get('seconds', {}).items():
    if name in results:
      results[name]['seconds'] = seconds
  moved = ('attacks', 'boundary', 'corruptions', 'gradient_masking_checks', 'seconds')
  return {'format': FORMAT, 'upgraded_from': 1, **{k: v for k, v in record.items() if k not in moved},
          'results': results}


def default_label(record: dict) -> str:
  """'unregularized', or e.g. 'regularized (α=4, Th=0.8, by fashion_mnist)'."""
  if not record['alpha']:
    return 'unregularized'
  th = record['threshold']
  target = 'S^pixel' if not th else f'Th={th:g}'
  return f'regularized (α={record["alpha"]:g}, {target}, by {record["reg_dataset"]})'


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
  """What makes a run the same run: its seeds and its model config (``rundir.model_fields`` of
  config.json), or, without config.json, its seeds and its results."""
  if os.path.isfile(os.path.join(workdir, 'config.json')):
    from pixelreg_jax import rundir  # pylint: disable=import-outside-toplevel  # imports JAX
    what = json.dumps(rundir.model_fields(rundir.read_config(workdir)), sort_keys=True, default=str)
  else:
    what = json.dumps({name: {k: v for k, v in r.items() if k != 'seconds'} for name, r in record['results'].items()},
                      sort_keys=True)
  return tuple(record.get('seeds', [])), record.get('dataset'), what


def load_records(workdirs: Sequence[str], filename: str = 'robustness.json') -> list[dict]:
  """The evaluation record of each run (``upgrade``d), a workdir listed twice read once.

  Raises:
    ReportError: an evaluation is missing, unreadable or of the format before the release
      protocol's Boundary attack, or two workdirs hold the same run.
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
    if not isinstance(record, dict):
      raise ReportError(f'{path} holds a JSON {type(record).__name__}, not an evaluation record; evaluate {w} again')
    record = upgrade(record, path)
    ident = _identity(w, record)
    if ident in identities:
      raise ReportError(f'{identities[ident]} and {w} hold the same run (seeds {list(ident[0])}, same config); '
                        'list each run once, or its seeds count twice')
    identities[ident] = w
    records.append(record)
  return records
