"""The two registries of the evaluation (big_vision's evaluators-as-a-registry).

``EVALUATORS``: name -> ``fn(ctx, record, name)``, which adds ``record['results'][name] =
{'kind': …, …}`` (``--attacks`` names them). ``KINDS``: kind -> ``Kind``, what the generic code
does with a result of that kind: its one-line summary (``evaluate``), and for ``report`` how the
runs of one model pool (``pool`` or ``derive``), what the model's summary.json entry holds
(``aggregate``) and the comparison with the baseline model (``compare``). Each kind's module
(``curves``, ``boundary``, ``corruptions``, ``masking_checks``) registers its evaluators and its
``Kind`` side by side, so the generic code is a loop over results dispatching on ``kind``.

``USES``: name -> the parts of the record, beyond the settings every evaluator shares (images,
batch size, seed), that the evaluator's result depends on (``'settings.boundary'``,
``'source_workdir'``, …): a record on disk merges a new evaluation per evaluator
(``evaluation.store``) and keeps each kept result's own settings.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from pixelreg_jax.attacks import masking
from pixelreg_jax.errors import ReportError

EVALUATORS: dict[str, Callable[..., None]] = {}
CHECKS: dict[str, Callable[..., None]] = {}
USES: dict[str, tuple[str, ...]] = {}
KINDS: dict[str, 'Kind'] = {}


def evaluator(*names: str, check: Optional[Callable[..., None]] = None, uses: tuple[str, ...] = ()):
  """Registers ``fn(ctx, record, name)`` under ``names`` (``--attacks`` values); ``check(settings,
  run_config)``, which raises ConfigError for settings the run cannot be evaluated with (run before
  any data is loaded); and ``uses``, the dotted paths of the record (``'settings.pgd'``,
  ``'source_workdir'``) its results depend on besides the shared settings."""
  def register(fn):
    for n in names:
      EVALUATORS[n] = fn
      USES[n] = tuple(uses)
      if check is not None:
        CHECKS[n] = check
    return fn
  return register


def names() -> list[str]:
  return list(EVALUATORS)


@dataclasses.dataclass
class Model:
  """One model of a report: the records of its runs, their pooled record (``report.pooled_record``:
  per-seed values concatenated over the runs, in run order) and its summary.json entry, which the
  kinds' ``aggregate`` and ``compare`` fill."""
  label: str
  runs: list[dict]
  pooled: dict
  entry: dict


@dataclasses.dataclass(frozen=True)
class Kind:
  """What generic code does with the results of one kind.

  Attributes:
    name: the results' ``'kind'``.
    summary: ``(name, result) -> {field: value}``, the result's fields of evaluate's one-line summary.
    aggregate: ``(name, model) -> None``: adds the mean ± SEM over the model's seeds of its pooled
      result ``model.pooled['results'][name]`` to ``model.entry``.
    pool: ``(label, name, results) -> pooled result`` for the results of the runs of model
      ``label`` (all of this kind), seeds concatenated in run order; ``ReportError`` when the runs
      were evaluated differently. None for a derived kind.
    derive: ``(record) -> result or None``: a result computed from the other results of a record
      (evaluate adds it after the evaluators ran; report computes it again on each pooled record).
    compare: ``(name, model, baseline) -> None``: adds the comparison with the baseline ``Model``
      to ``model.entry`` (called for every model, the baseline included, holding ``name``).
    check: ``(where, result, seeds) -> None``: raises ReportError when a result read from a file
      is not of the kind's shape for a record of ``seeds`` seeds (``report`` reads records users
      may have edited or cut; a wrong shape is one line, not a traceback in the pooling).
  """
  name: str
  summary: Callable[[str, dict], dict]
  aggregate: Callable[[str, Model], None]
  pool: Optional[Callable[[str, str, list[dict]], dict]] = None
  derive: Optional[Callable[[dict], Optional[dict]]] = None
  compare: Optional[Callable[[str, Model, Model], None]] = None
  check: Optional[Callable[[str, dict, int], None]] = None


def register_kind(kind: Kind) -> Kind:
  KINDS[kind.name] = kind
  return kind


def add_derived(record: dict) -> dict:
  """Adds to ``record['results']`` every derived result (``Kind.derive``) its other results allow
  (e.g. the gradient-masking checks of its PGD curves), replacing any it held; returns ``record``."""
  for kind in KINDS.values():
    if kind.derive:
      record['results'].pop(kind.name, None)
      result = kind.derive(record)
      if result is not None:
        record['results'][kind.name] = result
  return record


def is_derived(name: str) -> bool:
  """Whether results named ``name`` are derived from the others (recomputed, never merged or pooled)."""
  return name in KINDS and KINDS[name].derive is not None


def kind_of(result: dict, where: str = 'a result') -> Kind:
  """The ``Kind`` of ``result``; ReportError for a kind this version does not know."""
  name = result.get('kind') if isinstance(result, dict) else None
  if name not in KINDS:
    raise ReportError(f'{where} has kind {name!r}, which this version does not know; known: {sorted(KINDS)}')
  return KINDS[name]


# -- helpers of the kinds' pooling --------------------------------------------------------------


def one_or_all(values) -> Any:
  """The value all runs share, else the list of the runs' values (e.g. differing image counts)."""
  values = list(values)
  return values[0] if all(v == values[0] for v in values[1:]) else values


def agree(label: str, what: str, values, close: bool = False) -> Any:
  """The value every run of model ``label`` has for ``what``; ReportError if they differ
  (``close``: arrays equal within float tolerance)."""
  values = list(values)
  first = values[0]
  same = (lambda v: np.shape(v) == np.shape(first) and np.allclose(v, first)) if close else (lambda v: v == first)
  if not all(same(v) for v in values[1:]):
    raise ReportError(f'the runs of {label!r} differ in {what} ({" vs ".join(map(str, values))}); pool only runs '
                      'evaluated alike, or give them different --labels')
  return first


def mean_sem(samples) -> dict:
  """{'mean', 'sem'} over axis 0 of ``samples`` [n, ...] (``attacks.masking.mean_sem``: SEM = s/√n,
  n − 1 degrees of freedom), as lists (floats for [n])."""
  mean, sem = masking.mean_sem(samples)
  return {'mean': mean.tolist(), 'sem': sem.tolist()}


def seeds_concatenated(results: list[dict], key: str) -> list:
  """``results[i][key]`` (each a per-seed list) concatenated in run order."""
  return [v for r in results for v in r[key]]


def _is_number(v: Any, allow_none: bool) -> bool:
  return (v is None and allow_none) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_array(value: Any, shape: tuple, where: str, allow_none: bool = False) -> None:
  """Raises ReportError unless ``value`` is nested lists of numbers of ``shape`` (None: any length;
  ``allow_none``: null leaves, a NaN written as strict JSON)."""
  if not shape:
    if not _is_number(value, allow_none):
      raise ReportError(f'{where} is {value!r}, not a number')
    return
  if not isinstance(value, list):
    raise ReportError(f'{where} is {str(value)[:60]!r}, not a list')
  if shape[0] is not None and len(value) != shape[0]:
    raise ReportError(f'{where} has {len(value)} entries, not {shape[0]}')
  for i, v in enumerate(value):
    check_array(v, shape[1:], f'{where}[{i}]', allow_none)


def check_fields(result: dict, where: str, **types: type) -> None:
  """Raises ReportError unless ``result`` holds each named field with a value of its type (an int
  is not a bool)."""
  for field, t in types.items():
    v = result.get(field)
    if not isinstance(v, t) or (isinstance(v, bool) and t is int):
      raise ReportError(f'{where}.{field} is {v!r}, not {t.__name__}')
