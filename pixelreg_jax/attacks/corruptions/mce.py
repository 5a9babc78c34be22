"""Corruption error (Hendrycks & Dietterich 2019): CE per corruption, its mean mCE, and the relative variants.

Inputs are error rates per severity, {name: [S]}, from accuracies averaged over seeds (``mean_errors``);
the baseline is the unregularized model. The formulas: docs/corruptions.md.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def mean_errors(accuracy: dict) -> dict[str, np.ndarray]:
  """{name: [S] error rate} = 1 − the seed mean of {name: [[S] per seed]} (or of [S]) accuracies."""
  return {name: 1.0 - np.atleast_2d(np.asarray(a, np.float64)).mean(0) for name, a in accuracy.items()}


def corruption_errors(errors: dict, baseline_errors: dict, clean_error: Optional[float] = None,
                      baseline_clean_error: Optional[float] = None) -> dict[str, float]:
  """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} per corruption (``errors``: {name: [S] error rates}).

  With both clean errors: the relative CE, Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean).
  Errors are 1 − accuracy (average over seeds first).
  """
  out = {}
  relative = clean_error is not None and baseline_clean_error is not None
  for name, e in errors.items():
    if name not in baseline_errors:
      raise ValueError(f'the baseline has no errors for {name!r}')
    e, b = np.asarray(e, np.float64), np.asarray(baseline_errors[name], np.float64)
    if e.shape != b.shape:
      raise ValueError(f'{name}: {e.shape[-1]} severities against the baseline\'s {b.shape[-1]}')
    if relative:
      e, b = e - clean_error, b - baseline_clean_error
    den = b.sum()
    out[name] = float(e.sum() / den) if den else math.nan
  return out


def mean_corruption_error(errors: dict, baseline_errors: dict, clean_error: Optional[float] = None,
                          baseline_clean_error: Optional[float] = None) -> float:
  """mCE = mean_c CE_c (``corruption_errors``; the baseline is the unregularized model)."""
  ce = corruption_errors(errors, baseline_errors, clean_error, baseline_clean_error)
  return float(np.mean(list(ce.values())))
