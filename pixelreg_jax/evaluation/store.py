"""The evaluation record on disk (``robustness.json``): written where it can be, merged per evaluator, under a lock.

``check_writable``  before anything is loaded: the output's directory exists and takes a file (a
                    missing directory or a read-only run directory used to fail only after the
                    whole evaluation)
``write``           under ``locked`` (``flock`` on ``<output's directory>/.evaluate.lock``: two
                    evaluations of one run directory at once wait for each other here, and none
                    loses the other's results; the training lock ``.lock`` is left alone, so
                    evaluating never blocks a training), reads the record already there, ``merge``s
                    the new one into it and writes the result atomically
``merge``           a new evaluation of the same checkpoint and shared settings (``SHARED``: the
                    images, batch size and seed every evaluator uses) adds or replaces its own
                    results and keeps the others, each with the settings it was computed with
                    (``registry.USES``); anything else replaces the earlier record, with a log line
                    saying why. Derived results (the gradient-masking checks) are computed again on
                    the merged record.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import tempfile
from typing import Any, Callable, Iterator, Optional

from pixelreg_jax import jsonio
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import registry

LOCK_NAME = '.evaluate.lock'
# Top-level fields of two records that must agree for their results to be merged.
IDENTITY = ('format', 'workdir', 'dataset', 'seeds', 'checkpoint', 'num_images', 'first_image')


def default_output(workdir: str) -> str:
  return os.path.join(workdir, 'robustness.json')


def check_writable(path: str) -> None:
  """Raises ConfigError unless a file can be written at ``path``: its directory exists and takes a
  new file (one is created and removed there), and ``path`` is no directory."""
  directory = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ConfigError(f'the output {path} is a directory; give a file name with --output')
  if not os.path.isdir(directory):
    raise ConfigError(f'the output {path} cannot be written: {directory} does not exist; create it or choose '
                      'another --output')
  try:
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'the output {path} cannot be written: {directory}: {e.strerror}; make it writable or choose '
                      'another --output') from e


@contextlib.contextmanager
def locked(directory: str, log: Callable[[str], None]) -> Iterator[None]:
  """Holds ``<directory>/.evaluate.lock`` (exclusive ``flock``) while inside, waiting for another
  evaluation that holds it (it does only while it reads, merges and writes its record)."""
  path = os.path.join(directory, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log(f'waiting for another evaluation writing into {directory} ({path})')
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)   # releases the lock


def _get(record: dict, path: str) -> Any:
  """``record['settings']['pgd']`` for 'settings.pgd' (None where a part is missing)."""
  node: Any = record
  for part in path.split('.'):
    node = node.get(part) if isinstance(node, dict) else None
  return node


def _set(record: dict, path: str, value: Any) -> None:
  *parents, last = path.split('.')
  node = record
  for part in parents:
    node = node.setdefault(part, {})
  node[last] = value


def shared_settings(settings: dict) -> list[str]:
  """The settings every evaluator depends on: those no evaluator claims in ``registry.USES``."""
  owned = {p.split('.')[1] for uses in registry.USES.values() for p in uses if p.startswith('settings.')}
  return [k for k in settings if k not in owned]


def incompatible(old: Any, new: dict) -> Optional[str]:
  """Why ``old`` (what the output file held) cannot be merged with the record ``new``, or None."""
  if not isinstance(old, dict) or not isinstance(old.get('results'), dict):
    return 'it is not an evaluation record'
  for key in IDENTITY:
    if old.get(key) != new[key]:
      return f'its {key} differs ({old.get(key)!r} there, {new[key]!r} now)'
  settings = old.get('settings') if isinstance(old.get('settings'), dict) else {}
  for key in shared_settings(new['settings']):
    if settings.get(key) != new['settings'][key]:
      return f'its eval.{key} differs ({settings.get(key)!r} there, {new["settings"][key]!r} now)'
  return None


def merge(old: Any, new: dict, where: str, log: Callable[[str], None]) -> dict:
  """``new`` with the results of ``old`` it does not hold itself, when ``old`` is an evaluation
  of the same checkpoint with the same shared settings (``incompatible``); else ``new`` alone.

  A kept result brings the parts of the record it depends on (``registry.USES``, e.g. its
  ``settings.boundary`` or FGSM's source) unless a new result depends on them too with other values:
  then the old result is dropped (logged), as the record holds one value of each.
  """
  reason = incompatible(old, new)
  if reason:
    log(f'{where}: the earlier evaluation in it is replaced, not merged: {reason}')
    return new
  fresh = {n: r for n, r in new['results'].items() if not registry.is_derived(n)}
  claimed = {p for n in fresh for p in registry.USES.get(n, ())}
  merged = dict(new, settings=copy.deepcopy(new['settings']), results={})
  kept = []
  for name, result in old['results'].items():
    if name in fresh or registry.is_derived(name):
      continue
    uses = registry.USES.get(name, ())
    clash = [p for p in uses if p in claimed and _get(old, p) != _get(new, p)]
    if clash:
      log(f'{where}: {name} of the earlier evaluation is dropped: its {clash[0]} differs from this evaluation\'s')
      continue
    for p in uses:
      _set(merged, p, _get(old, p))
    merged['results'][name] = result
    kept.append(name)
  merged['results'].update(fresh)
  evaluators = old.get('evaluators') if isinstance(old.get('evaluators'), list) else []
  merged['evaluators'] = list(dict.fromkeys([e for e in evaluators if e in kept or e not in old['results']]
                                            + new['evaluators']))
  if kept:
    log(f'{where}: kept the earlier results of {", ".join(kept)} (same checkpoint and settings)')
  return registry.add_derived(merged)


def write(path: str, record: dict, log: Callable[[str], None]) -> dict:
  """Merges ``record`` into the record at ``path`` (if any) and writes it, under the lock; returns
  what was written. An unreadable file there is replaced, with a log line."""
  with locked(os.path.dirname(os.path.abspath(path)), log):
    old = None
    if os.path.exists(path):
      try:
        old = jsonio.read_object(path, 'an evaluation record', ConfigError)
      except ConfigError as e:
        log(f'{e}: replaced by this evaluation')
    out = merge(old, record, path, log) if old is not None else record
    jsonio.write(path, out)
  return out
