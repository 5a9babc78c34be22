"""Checkpoints with orbax: save every epoch, restore for evaluation, resume after a kill.

Layout: ``<workdir>/checkpoints/<epoch>/`` holds three items:
  state  the full train state (step, params, batch_stats, sim_stats, opt_state), [K, ...];
  best   the best-by-validation variables so far (params, batch_stats, sim_stats), [K, ...];
  meta   JSON: epoch, best_val_loss, best_epoch, seeds, the run's config, and a CRC-32 of each of
         state, best and meta itself (every bit of a checkpoint is covered).
The latest ``keep`` epochs are kept; the best model travels inside every checkpoint, so it
is never lost with an old one.

Saves are synchronous (orbax's ``enable_async_checkpointing=False``): ``save`` returns when the
checkpoint is on disk, and a failed write (disk full, permissions) is one ``CheckpointError`` at
once; the checkpoints of earlier epochs are untouched by it. Orbax writes a checkpoint into a
temporary directory and renames it when complete, so a kill during a save leaves no half
checkpoint behind.

Every restore is verified and tells three cases apart:
  * incompatible: the checkpoint's tree (names, shapes, dtypes; read from orbax's metadata,
    before any data) differs from the current model's, e.g. another width or a code change
    that adds a parameter. Nothing is moved; ``CheckpointError`` says what differs and asks for
    a new ``--workdir``.
  * corrupt: files that cannot be read, or arrays whose CRC-32 differs from the one saved
    beside them. Training moves the checkpoint to ``checkpoints/corrupt/`` (never deleted) and
    uses the one before; evaluation (read-only) skips it. Either way a warning says why, and
    ``last_restore`` records which checkpoint was used and what was skipped.
  * good: restored bit for bit as saved.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging as std_logging
import os
import re
import shutil
import sys
import threading
import time
import zlib
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from pixelreg_jax import errors
from pixelreg_jax.errors import CheckpointError

# meta['format']: 2 = a CRC-32 of state and best in meta['checksums']; 3 = of meta itself too.
FORMAT = 3
ITEMS = ('state', 'best')


def state_tree(state) -> dict:
  """The arrays of a TrainState (without its static fields)."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'sim_stats': state.sim_stats, 'opt_state': state.opt_state}


def checksum(tree: Any) -> str:
  """'crc32:xxxxxxxx' over every leaf's dtype, shape and raw bytes, in tree order.

  Any change of a value (a single flipped bit included), shape or dtype changes it. Reads
  the arrays to the host."""
  crc = 0
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    a = np.ascontiguousarray(leaf)
    crc = zlib.crc32(f'{a.dtype.str}{a.shape}'.encode(), crc)
    crc = zlib.crc32(memoryview(a).cast('B'), crc)
  return f'crc32:{crc:08x}'


def meta_checksum(meta: dict) -> str:
  """'crc32:xxxxxxxx' of the metadata without its 'checksums' (canonical JSON: sorted keys)."""
  text = json.dumps({k: v for k, v in meta.items() if k != 'checksums'}, sort_keys=True)
  return f'crc32:{zlib.crc32(text.encode()):08x}'


def describe_tree(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/stem_conv/kernel': (shape, dtype name)} for every array leaf of a tree, or of
  orbax's metadata tree of a saved item (tuples and namedtuples give the same paths)."""
  return {jax.tree_util.keystr(path, simple=True, separator='/'): (tuple(int(d) for d in leaf.shape),
                                                                   np.dtype(leaf.dtype).name)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype')}


def tree_differences(saved: dict, current: dict) -> list[str]:
  """What differs between two ``describe_tree`` results, one phrase per array."""
  out = []
  for name in sorted(set(saved) | set(current)):
    if name not in saved:
      out.append(f'{name} is not in the checkpoint')
    elif name not in current:
      out.append(f'{name} is in the checkpoint but not in the model')
    elif saved[name] != current[name]:
      (s_shape, s_dtype), (c_shape, c_dtype) = saved[name], current[name]
      out.append(f'{name} is {s_dtype}{list(s_shape)} there, {c_dtype}{list(c_shape)} now')
  return out


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _first_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:limit] if text else ""}'


def _save_failure_reason(e: BaseException) -> str:
  """The operating system's reason behind a failed save (e.g. 'No space left on device'),
  found in the exception chain or in tensorstore's ``os_error_code``; else the first line."""
  for c in errors.chain(e):
    if isinstance(c, OSError) and c.strerror:
      return c.strerror + (f': {c.filename}' if c.filename else '')
    m = re.search(r"os_error_code='?(\d+)", str(c))
    if m:
      return os.strerror(int(m.group(1)))
  return _first_line(e)


class _OtherThreadsHeld(io.TextIOBase):
  """``sys.stderr`` while a save runs: the main thread writes through; what other threads write
  (tensorstore's callbacks print a traceback each, 'Event loop is closed', when the writes that
  were still in flight after a failed save complete) is held back.

  After a successful save the held text is written out; after a failed one this stays in place
  for the rest of the process (which ends with the one-line error), turning those late
  tracebacks into DEBUG log records.
  """

  def __init__(self, stream):
    super().__init__()
    self.stream, self.held, self.failed = stream, [], False

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self.stream.write(text)
    if self.failed:
      logging.debug('after a failed save: %s', text.rstrip())
    else:
      self.held.append(text)
    return len(text)

  def flush(self) -> None:
    self.stream.flush()


class _OrbaxErrorsToDebug(std_logging.Filter):
  """Orbax's ERROR records (each a traceback of a failed write, logged by its threads): the
  failure is reported once, as a CheckpointError; these go to DEBUG."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname:
      logging.debug('orbax: %s', record.getMessage())
      return False
    return True


_ORBAX_ERRORS = _OrbaxErrorsToDebug()


class _OrphanedWritesToDebug(std_logging.Filter):
  """After a failed save, asyncio logs each of orbax's other failed writes as '… exception was
  never retrieved' (with a traceback) when its task is collected, maybe at exit, on the main
  thread: the failure is already reported, so these go to DEBUG."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if 'exception was never retrieved' not in record.getMessage():
      return True
    logging.debug('after a failed save: %s', record.getMessage().splitlines()[0])
    return False


@contextlib.contextmanager
def _save_noise_held():
  """While a save runs: orbax's error records to DEBUG, other threads' stderr held back
  (``_OtherThreadsHeld``); after a failure both stay in place for the rest of the process, and
  asyncio's reports of the orphaned writes go to DEBUG too."""
  if isinstance(sys.stderr, _OtherThreadsHeld):   # a save failed before: everything stays in place
    yield
    return
  logger, held = logging.get_absl_logger(), _OtherThreadsHeld(sys.stderr)
  logger.addFilter(_ORBAX_ERRORS)
  sys.stderr = held
  try:
    yield
  except BaseException:
    held.failed = True
    std_logging.getLogger('asyncio').addFilter(_OrphanedWritesToDebug())
    raise
  logger.removeFilter(_ORBAX_ERRORS)
  sys.stderr = held.stream
  held.stream.write(''.join(held.held))


@dataclasses.dataclass
class Restored:
  """What a restore found.

  Attributes:
    items: the restored trees by item name ('state', 'best').
    meta: the checkpoint's metadata (epoch 0-based, best_val_loss, best_epoch, …).
    step: the checkpoint's directory name, the 0-based epoch it was saved after.
    skipped: why each newer checkpoint was not used, newest first (empty: the latest was used).
  """
  items: dict
  meta: dict
  step: int
  skipped: list[str] = dataclasses.field(default_factory=list)

  @property
  def epoch(self) -> int:
    """The number of finished epochs the checkpoint holds (1-based, as logs and results count)."""
    return self.step + 1

  @property
  def fallback_reason(self) -> Optional[str]:
    """None when the latest checkpoint was used, else why the newer ones were not."""
    return '; '.join(self.skipped) if self.skipped else None


class _Corrupt(Exception):
  """A checkpoint that cannot be used as it is (unreadable or altered data)."""


class CheckpointManager:
  """Epoch checkpoints of a run directory.

  Args:
    workdir: the run directory; checkpoints go to ``<workdir>/checkpoints``.
    keep: how many of the latest checkpoints to keep.
    read_only: never save nor move anything (evaluation); the directory must exist.
  """

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'no checkpoints in {self.workdir}; train there first with '
                            f'python -m pixelreg_jax.main --workdir={workdir}')
    # Read-only use simply never saves (orbax's own read_only mode only adds warnings).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'best': ocp.StandardCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.last_restore: Optional[Restored] = None
    self._skipped: list[str] = []

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, epoch: int, state, best_variables: dict, meta: dict) -> None:
    """Saves the checkpoint of a finished epoch (0-based); returns when it is on disk.

    Raises:
      CheckpointError: the save failed (disk full, no permission, …) or orbax did not write it;
        the checkpoints of earlier epochs are intact.
    """
    tree = state_tree(state)
    meta = dict(meta, format=FORMAT, saved_at=time.time())
    meta['checksums'] = {'state': checksum(tree), 'best': checksum(best_variables), 'meta': meta_checksum(meta)}
    where = f'the checkpoint of epoch {epoch + 1} in {self.directory}'
    try:
      with _save_noise_held():
        saved = self._mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                               best=ocp.args.StandardSave(best_variables),
                                                               meta=ocp.args.JsonSave(meta)))
        self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'could not save {where}: {_save_failure_reason(e)}; '
                            'the checkpoints of earlier epochs are intact') from e
    if not saved:
      raise CheckpointError(f'could not save {where}: orbax skipped it (a checkpoint of that epoch exists); '
                            'the checkpoints of earlier epochs are intact')

  # -- restoring ---------------------------------------------------------------------

  def _check_compatible(self, step: int, items: dict[str, Any]) -> None:
    """Raises CheckpointError if the saved trees differ from the templates; _Corrupt if the
    metadata cannot be read."""
    try:
      metadata = self._mngr.item_metadata(step)
      saved = {name: metadata[name] for name in items}
    except Exception as e:  # pylint: disable=broad-except
      raise _Corrupt(f'unreadable metadata ({_first_line(e)})') from e
    for name, template in items.items():
      if saved[name] is None:
        raise _Corrupt(f'no metadata for {name}')
      diff = tree_differences(describe_tree(saved[name]), describe_tree(template))
      if diff:
        more = f' and {len(diff) - 1} more difference(s)' if len(diff) > 1 else ''
        raise CheckpointError(
            f'{self.workdir} holds a different model (checkpoint {step + 1}, {name}: {diff[0]}{more}); '
            'use a new --workdir')

  def _restore_step(self, step: int, items: dict[str, Any]) -> dict:
    """The verified ``items`` (templates given) and meta of one checkpoint.

    Raises:
      CheckpointError: the checkpoint is of a different model.
      _Corrupt: it cannot be read or its data differ from their checksums.
    """
    self._check_compatible(step, items)
    args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in items.items()}   # a bad template is a bug
    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise _Corrupt(f'unreadable ({_first_line(e)})') from e
    if not isinstance(meta, dict) or not isinstance(meta.get('checksums'), dict):
      raise _Corrupt('its metadata has no checksums')
    if (meta.get('format', 2) >= 3 or 'meta' in meta['checksums']) and \
       meta_checksum(meta) != meta['checksums'].get('meta'):
      raise _Corrupt(f'its metadata differs from its checksum ({meta_checksum(meta)} vs '
                     f'{meta["checksums"].get("meta")})')
    if meta.get('epoch', step) != step:
      raise _Corrupt(f'its metadata says epoch {meta.get("epoch")} in the directory of epoch {step}')
    for name in items:
      got = checksum(restored[name])
      if got != meta['checksums'].get(name):
        raise _Corrupt(f'{name} differs from its checksum ({got} vs {meta["checksums"].get(name)})')
    return {**{name: restored[name] for name in items}, 'meta': meta}

  def _set_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, 'corrupt', f'{step}-{int(time.time())}')
    if jax.process_index() == 0:   # One process moves it; the others wait for that.
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self._mngr.reload()
    return dst

  def restore(self, items: dict[str, Any], set_aside: bool = True,
              log: Optional[Callable[[str], None]] = None) -> Optional[Restored]:
    """The newest usable checkpoint's verified ``items`` (templates given), or None if none is.

    Corrupt checkpoints are moved to ``checkpoints/corrupt/`` (``set_aside``, training) or
    skipped (read-only), newest first, each with a warning (to ``log`` if given, else absl).

    Raises:
      CheckpointError: a checkpoint holds a different model (nothing is moved).
    """
    warn = (lambda s: log(f'WARNING: {s}')) if log is not None else logging.warning
    skipped = []
    for step in reversed(self.all_steps()):
      path = os.path.join(self.directory, str(step))
      try:
        out = self._restore_step(step, items)
      except _Corrupt as e:
        reason = f'checkpoint {step + 1} is corrupt: {e}'
        skipped.append(reason)
        if set_aside:
          dst = self._set_aside(step)
          warn(f'{reason}; moved {path} to {dst}, using the one before')
        else:
          warn(f'{reason} ({path}); using the one before')
        continue
      meta = out.pop('meta')
      self.last_restore = Restored(out, meta, step, skipped)
      return self.last_restore
    self.last_restore = None
    self._skipped = skipped
    return None

  def restore_latest(self, state, best_variables: dict, log: Optional[Callable[[str], None]] = None):
    """(state, best variables, meta) from the newest usable checkpoint, or None (corrupt ones
    set aside). Which checkpoint and why newer ones were skipped: ``last_restore``."""
    out = self.restore({'state': state_tree(state), 'best': best_variables}, log=log)
    if out is None:
      return None
    return state.replace(**out.items['state']), out.items['best'], out.meta

  def restore_best(self, best_variables: dict, log: Optional[Callable[[str], None]] = None) -> tuple[dict, dict]:
    """The best variables and meta, read-only; raises CheckpointError when none is usable.
    Which checkpoint and why newer ones were skipped: ``last_restore``."""
    out = self.restore({'best': best_variables}, set_aside=False, log=log)
    if out is None:
      why = f' ({"; ".join(self._skipped)})' if self._skipped else ''
      raise CheckpointError(f'no usable checkpoint in {self.directory}{why}')
    return out.items['best'], out.meta
