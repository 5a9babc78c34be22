"""Strict JSON files: what every tool of the package writes (results, records, summaries).

Strict means what the JSON standard allows: no NaN or ±Infinity (written as ``null``), NumPy
values as plain numbers and lists. Files are written whole or not at all (a temporary file,
then an atomic rename), so a kill mid-write never leaves half a file.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def strict(obj: Any) -> Any:
  """``obj`` with NaN and ±inf as None, NumPy arrays and scalars as Python lists and numbers,
  tuples as lists and dict keys as strings."""
  if isinstance(obj, dict):
    return {str(k): strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return strict(obj.tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def number(v: Any) -> float | None:
  """A float for strict JSON: None for NaN and ±inf."""
  return strict(float(v))


def dumps(obj: Any, **kwargs) -> str:
  """One strict-JSON text (e.g. a JSONL line or the one-line result a program prints)."""
  return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write(path: str, obj: Any) -> None:
  """Writes ``obj`` as strict, indented JSON to ``path`` atomically."""
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(dumps(obj, indent=2))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_object(path: str, what: str, error: type[Exception] = ValueError, advice: str = '') -> dict:
  """The JSON object in the file ``path``, which must hold ``what`` (e.g. 'a config').

  Every file the package reads back whole (config.json, robustness.json) goes through here, so
  each failure is one line of the caller's ``error`` type: ``<path> is unreadable (…)`` or
  ``<path> holds a JSON list, not a config``, followed by ``advice`` (what to do about it).
  """
  tail = f'; {advice}' if advice else ''
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:   # ValueError: JSONDecodeError, UnicodeDecodeError
    raise error(f'{path} is unreadable ({type(e).__name__}: {e}){tail}') from e
  if not isinstance(obj, dict):
    raise error(f'{path} holds a JSON {type(obj).__name__}, not {what}{tail}')
  return obj
