"""Reading the evaluation records of the reported runs: each run once, every record in the current format.

``load_records`` reads ``<workdir>/robustness.json`` of every workdir (a workdir listed twice, by
any path spelling, is read once), upgrades records of the first format (``upgrade``), checks that
each is a record of the right shapes (``check_record``, ``check_results``: an edited or cut file is
one line, not a traceback in the pooling) and refuses two workdirs that hold the same run
(``same_run``): same seeds and dataset, and the same model config (``rundir.model_fields``) or,
where a run has no config.json, the same numbers. Pooling them would count each seed twice and
shrink the SEM. ``check_poolable`` refuses to pool runs into one model that differ in more than
their seeds (another dataset, train_subset, number of epochs, …).

Nothing here imports JAX at import time: ``rundir`` and the result kinds (which do) are imported
once a record was read.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from absl import logging

from pixelreg_jax import jsonio
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
  for key, t in (('attacks', dict), ('boundary', dict), ('corruptions', dict), ('seconds', dict),
                 ('gradient_masking_checks', list)):
    wrong = key in record and not isinstance(record[key], t)
    if wrong or (key == 'attacks' and not all(isinstance(e, dict) for e in record.get(key, {}).values())):
      raise ReportError(f'{path} is not an evaluation record (its {key} is {str(record[key])[:60]}); evaluate '
                        f'{os.path.dirname(path) or "."} again')
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


REQUIRED = {'workdir': str, 'dataset': str, 'seeds': list, 'alpha': (int, float), 'threshold': (int, float),
            'reg_dataset': str, 'results': dict}   # what the report reads of every record
FALLBACK = ('dataset', 'alpha', 'threshold', 'reg_dataset')   # a run's model without config.json


def check_record(record: dict, path: str) -> None:
  """Raises ReportError unless ``record`` (upgraded) holds what the report reads: the run's identity,
  seeds, per-seed clean accuracy and results that are objects with a kind. The results' own shapes
  are their kinds' (``check_results``)."""
  def bad(what: str) -> ReportError:
    return ReportError(f'{path} is not an evaluation record ({what}); evaluate {os.path.dirname(path) or "."} again')
  for field, t in REQUIRED.items():
    if not isinstance(record.get(field), t) or isinstance(record.get(field), bool):
      raise bad(f'its {field} is {record.get(field)!r}' if field in record else f'no {field!r}')
  if not record['seeds'] or not all(isinstance(s, int) and not isinstance(s, bool) for s in record['seeds']):
    raise bad(f'its seeds are {record["seeds"]!r}, not a list of integers')
  clean = record.get('clean_accuracy', [0] * len(record['seeds']))   # optional
  if not isinstance(clean, list) or len(clean) != len(record['seeds']) or \
      not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in clean):
    raise bad(f'its clean_accuracy is {clean!r}, not one number per seed')
  for field, t in (('num_images', int), ('num_classes', int), ('checkpoint', dict)):
    if record.get(field) is not None and (not isinstance(record[field], t) or isinstance(record[field], bool)):
      raise bad(f'its {field} is {record[field]!r}')
  for name, result in record['results'].items():
    if not isinstance(result, dict) or not isinstance(result.get('kind'), str):
      raise bad(f'results.{name} is not an object with a kind')


def check_results(records: Sequence[dict]) -> None:
  """Raises ReportError for a result of a kind this version does not know, or not of its kind's
  shape (``Kind.check``). Imports the kinds (and JAX): called once every record was read."""
  from pixelreg_jax.evaluation import registry  # pylint: disable=import-outside-toplevel  # imports JAX
  for record in records:
    path = record['_read_from']
    for name, result in record['results'].items():
      kind = registry.kind_of(result, f'{path}: results.{name}')
      if kind.check is not None:
        kind.check(f'{path}: results.{name}', result, len(record['seeds']))


def model_config(workdir: str) -> Optional[dict]:
  """The model fields of ``workdir``'s config.json (``rundir.model_fields``: without the fields that
  do not change the model), or None without config.json.

  Raises:
    ReportError: config.json is unreadable or not a JSON object.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None
  config = jsonio.read_object(path, 'a config', ReportError,
                              f'repair or remove it (the report then takes the run\'s model from {workdir}\'s record)')
  from pixelreg_jax import rundir  # pylint: disable=import-outside-toplevel  # imports JAX
  return rundir.model_fields(config)


def _results(record: dict) -> dict:
  """The record's results without their seconds (a copy evaluated again has other seconds)."""
  return {name: {k: v for k, v in r.items() if k != 'seconds'} for name, r in record['results'].items()}


def same_run(a: dict, b: dict) -> bool:
  """Whether records ``a`` and ``b`` (``load_records``) hold the same run: the same seeds and
  dataset, and the same model config when both runs have config.json, else the same numbers in
  every result they share (a copy evaluated again only adds results)."""
  if a['seeds'] != b['seeds'] or a['dataset'] != b['dataset']:
    return False
  if a['_model_config'] is not None and b['_model_config'] is not None:
    return a['_model_config'] == b['_model_config']
  ra, rb = _results(a), _results(b)
  shared = [n for n in ra if n in rb]
  return bool(shared) and all(ra[n] == rb[n] for n in shared)


def _workdir(record: dict) -> str:
  return os.path.dirname(record['_read_from']) if '_read_from' in record else record['workdir']


def check_poolable(label: str, records: Sequence[dict]) -> None:
  """Raises ReportError unless the runs of model ``label`` differ in their seeds alone: their
  config.json agree on every model field (``rundir.model_fields``) but ``seed`` and ``num_seeds``;
  where a run has no config.json, their records agree on the dataset, α, Th and regularization
  dataset (logged: the rest of their configs is not known)."""
  if len(records) < 2:
    return
  if all(r.get('_model_config') is not None for r in records):
    def fields(r: dict) -> dict:
      return {k: v for k, v in r['_model_config'].items() if k not in ('seed', 'num_seeds')}
  else:
    without = [_workdir(r) for r in records if r.get('_model_config') is None]
    logging.warning('%s: no config.json, so the runs of %r are pooled by the %s of their records only', ', '.join(
        without), label, ', '.join(FALLBACK))

    def fields(r: dict) -> dict:
      return {k: r.get(k) for k in FALLBACK}
  first = fields(records[0])
  for r in records[1:]:
    other = fields(r)
    diff = [k for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k)]
    if diff:
      k, more = diff[0], f' ({len(diff) - 1} more fields differ)' if diff[1:] else ''
      raise ReportError(f'the runs of {label!r} are not one model: {k} is {first.get(k)!r} in {_workdir(records[0])}, '
                        f'{other.get(k)!r} in {_workdir(r)}{more}; pool only runs that differ in the seed, or give '
                        'them different --labels')


def load_records(workdirs: Sequence[str], filename: str = 'robustness.json') -> list[dict]:
  """The evaluation record of each run (``upgrade``d and checked), a workdir listed twice read once.

  Each record gets ``'_read_from'`` (the file) and ``'_model_config'`` (``model_config``), which
  tell runs apart (``same_run``) and which runs pool into one model (``check_poolable``).

  Raises:
    ReportError: an evaluation is missing, unreadable, not a record (``check_record``,
      ``check_results``) or of the format before the release protocol's Boundary attack; a
      config.json beside it is unreadable; or two workdirs hold the same run.
  """
  records = []
  for w in unique_workdirs(workdirs):
    path = os.path.join(w, filename)
    if not os.path.isfile(path):
      raise ReportError(f'{path} is missing; run python -m pixelreg_jax.evaluate --workdir={w} first')
    record = upgrade(jsonio.read_object(path, 'an evaluation record', ReportError, f'evaluate {w} again'), path)
    check_record(record, path)
    record.update(_read_from=path, _model_config=model_config(w))
    for earlier in records:
      if same_run(earlier, record):
        both = record['_model_config'] is not None and earlier['_model_config'] is not None
        how = '' if both else ' by their records (without config.json: the same dataset and results)'
        raise ReportError(f'{_workdir(earlier)} and {w} hold the same run (seeds {record["seeds"]}, same config){how}; '
                          'list each run once, or its seeds count twice')
    records.append(record)
  check_results(records)
  return records
