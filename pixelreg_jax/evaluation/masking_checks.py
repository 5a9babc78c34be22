"""The gradient-masking checks (``attacks.masking``), result kind 'gradient_masking_checks'.

A derived result: no evaluator computes it; whenever a record holds white-box PGD curves or
black-box attacks (Square, HopSkipJump),
``evaluate`` adds ``record['results']['gradient_masking_checks'] = {'kind':
'gradient_masking_checks', 'checks': [{'check', 'passed', 'detail'}]}`` after the evaluators ran.
``report`` runs the checks again on each model's pooled record (its runs' seeds concatenated attack
by attack in run order, so the seed-paired differences stay paired and every seed counts; the
one-image tolerance uses the smallest image count of the runs); a model of several runs also lists
the checks that fail in any single run. Against the baseline model, summary.json holds the
white-box comparison (``masking.compare_models``: mean ± SEM per attack and ε, and the difference).
"""
from __future__ import annotations

from typing import Optional

from pixelreg_jax.attacks import masking
from pixelreg_jax.errors import ReportError
from pixelreg_jax.evaluation import registry

KIND = 'gradient_masking_checks'


def derive(record: dict) -> Optional[dict]:
  """The checks of a record with white-box PGD curves or black-box attacks, else None."""
  checks = masking.gradient_masking_checks(record)
  return {'kind': KIND, 'checks': checks} if checks else None


def _failed(result: dict) -> list[str]:
  return [c['check'] for c in result['checks'] if not c['passed']]


def summary(name: str, result: dict) -> dict:
  return {f'{name}_failed': _failed(result)}


def aggregate(name: str, model: registry.Model) -> None:
  """``entry['gradient_masking_checks']``: the checks of the pooled record; with several runs also
  ``entry['gradient_masking_failed_per_run']``: {workdir: the checks failing on its seeds alone}."""
  model.entry[name] = model.pooled['results'][name]['checks']
  if len(model.runs) > 1:
    model.entry['gradient_masking_failed_per_run'] = {r['workdir']: _failed(derive(r)) for r in model.runs}


def compare(name: str, model: registry.Model, baseline: registry.Model) -> None:
  """``entry['whitebox_vs_baseline']``: every PGD attack of both models, model against the baseline."""
  del name
  if model.label == baseline.label:
    return
  try:
    comparison = masking.compare_models(baseline.runs, model.runs)
  except ValueError as e:
    raise ReportError(f'{model.label!r} against the baseline {baseline.label!r}: {e}') from e
  if comparison:
    model.entry['whitebox_vs_baseline'] = {'baseline': baseline.label, 'comparison': comparison}


registry.register_kind(registry.Kind(KIND, summary=summary, aggregate=aggregate, derive=derive, compare=compare))
