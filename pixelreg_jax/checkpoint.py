"""Checkpoints with orbax: save every epoch, restore for evaluation, resume after a kill.

Layout: ``<workdir>/checkpoints/<epoch>/`` holds three items:
  state  the full train state (step, params, batch_stats, sim_stats, opt_state), [K, ...];
  best   the best-by-validation variables so far (params, batch_stats, sim_stats), [K, ...];
  meta   JSON: epoch, best_val_loss, best_epoch, seeds, and a CRC-32 of each of state and best.
The latest ``keep`` epochs are kept; the best model travels inside every checkpoint, so it
is never lost with an old one.

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
Checkpoints written before per-item checksums (meta ``checksum`` = [Σx, Σx²] over state and
best together) are still read: the state is restored too, to check the combined sums.

Orbax writes a checkpoint into a temporary directory and renames it when complete, so a kill
during a save leaves no half checkpoint behind. ``save`` waits for the write and turns a
failure (disk full, permissions) into one ``CheckpointError`` at once; the checkpoints of
earlier epochs are untouched by a failed save.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging as std_logging
import os
import re
import shutil
import sys
import time
import traceback
import warnings
import zlib
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from pixelreg_jax.errors import CheckpointError

FORMAT = 2   # meta['format']: 2 = per-item CRC-32 in meta['checksums']; absent = legacy [Σx, Σx²].
ITEMS = ('state', 'best')


def state_tree(state) -> dict:
  """The arrays of a TrainState (without its static fields)."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'sim_stats': state.sim_stats, 'opt_state': state.opt_state}


def checksum(tree: Any) -> str:
  """'crc32:xxxxxxxx' over every leaf's dtype, shape and raw bytes, in tree order.

  Any change of a value (a single flipped bit included), shape or dtype changes it. Reads
  the arrays to the host; about 1 GB/s."""
  crc = 0
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    a = np.ascontiguousarray(leaf)
    crc = zlib.crc32(f'{a.dtype.str}{a.shape}'.encode(), crc)
    crc = zlib.crc32(memoryview(a).cast('B'), crc)
  return f'crc32:{crc:08x}'


def legacy_checksum(tree: Any) -> list[float]:
  """[Σx, Σx²] over every leaf in float64: the checksum of checkpoints before format 2."""
  total, total_sq = 0.0, 0.0
  with np.errstate(all='ignore'):   # Damaged data may hold NaN/inf: the comparison catches it.
    for leaf in jax.tree.leaves(jax.device_get(tree)):
      a = np.asarray(leaf, np.float64)
      total += float(a.sum())
      total_sq += float(np.square(a).sum())
  return [total, total_sq]


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def describe_tree(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/stem_conv/kernel': (shape, dtype name)} for every array leaf of a tree, or of
  orbax's metadata tree of a saved item (tuples and namedtuples give the same paths)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'):
      out['/'.join(_key_name(k) for k in path)] = (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name)
  return out


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
  seen, chain = set(), []
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for c in chain:
    if isinstance(c, OSError) and c.strerror:
      return c.strerror + (f': {c.filename}' if c.filename else '')
    m = re.search(r"os_error_code='?(\d+)", str(c))
    if m:
      return os.strerror(int(m.group(1)))
  return _first_line(chain[0])


class _HeldErrors(std_logging.Filter):
  """Holds back orbax's ERROR records (whole tracebacks of its writer threads) while a save
  runs: a failure becomes one CheckpointError instead; they are logged at DEBUG."""

  def __init__(self):
    super().__init__()
    self.held: list[std_logging.LogRecord] = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname:
      self.held.append(record)
      return False
    return True


class _OrphanedOrbaxTasks(std_logging.Filter):
  """After a failed save, asyncio logs each of orbax's other failed writes as '... exception
  was never retrieved' (with a traceback) whenever its future is collected, maybe at exit: the
  failure is already reported as one CheckpointError, so these go to DEBUG."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    if 'exception was never retrieved' not in message:
      return True
    text = message + (''.join(traceback.format_exception(*record.exc_info)) if record.exc_info else '')
    if 'orbax' not in text:   # its code in the traceback, or its temporary directory in the message
      return True
    logging.debug('orbax (after a failed save): %s', message.splitlines()[0])
    return False


def _quiet_after_failed_save() -> None:
  """What a failed orbax save leaves behind reports itself later (orphaned futures, coroutines
  never awaited, at collection or at exit); the failure is reported once, as CheckpointError."""
  std_logging.getLogger('asyncio').addFilter(_ORPHANED_TASKS)
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


_ORPHANED_TASKS = _OrphanedOrbaxTasks()
_LATE_PRINT_GRACE_S = 0.5


@contextlib.contextmanager
def _orbax_errors_held():
  """While inside, orbax's ERROR records and whatever its threads print on stderr (tensorstore
  callbacks that find orbax's event loop closed after a failed write print tracebacks) are held
  back; they are logged at DEBUG afterwards, and stderr output is replayed if nothing failed."""
  logger, held, printed = logging.get_absl_logger(), _HeldErrors(), io.StringIO()
  logger.addFilter(held)
  failed = True
  try:
    with contextlib.redirect_stderr(printed):
      try:
        yield held
      except BaseException:
        _quiet_after_failed_save()
        gc.collect()                       # collect the failed write tasks while output is held
        time.sleep(_LATE_PRINT_GRACE_S)   # the late tracebacks come within milliseconds
        raise
    failed = False
  finally:
    logger.removeFilter(held)
    for record in held.held:
      logging.debug('orbax: %s', record.getMessage())
    if printed.getvalue():
      if failed:
        logging.debug('printed during the save: %s', printed.getvalue())
      else:
        sys.stderr.write(printed.getvalue())


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
    wait_for_saves: each ``save`` returns only when its checkpoint is on disk, so a failed
      save stops the run at once. False: orbax writes in the background while training goes
      on (saves the write time, e.g. ~1 s per epoch for a full-width ResNet18 on a busy CPU
      host), and a failure surfaces at the next ``save``/``check``/``wait``.
  """

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False, wait_for_saves: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'no checkpoints in {self.workdir}; train there first with '
                            f'python -m pixelreg_jax.main --workdir={workdir}')
    # Read-only use simply never saves (orbax's own read_only mode only adds warnings).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'best': ocp.StandardCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.wait_for_saves = wait_for_saves
    self.last_restore: Optional[Restored] = None
    self._skipped: list[str] = []
    self._pending: Optional[int] = None   # the epoch of a save not yet known to have succeeded

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  # -- saving ------------------------------------------------------------------------

  def save(self, epoch: int, state, best_variables: dict, meta: dict) -> None:
    """Saves the checkpoint of a finished epoch (0-based).

    With ``wait_for_saves`` (the default) it returns when the checkpoint is on disk; else the
    write goes on in the background and its outcome is checked by the next ``save``, ``check``
    or ``wait``.

    Raises:
      CheckpointError: this save (or, in the background mode, the previous one) failed: disk
        full, no permission, …; the checkpoints of earlier epochs are intact.
    """
    self._finish_pending(block=True)
    tree = state_tree(state)
    meta = dict(meta, format=FORMAT, checksums={'state': checksum(tree), 'best': checksum(best_variables)},
                saved_at=time.time())
    self._pending = epoch
    with self._errors_as_checkpoint_error():
      self._mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                     best=ocp.args.StandardSave(best_variables),
                                                     meta=ocp.args.JsonSave(meta)))
    if self.wait_for_saves:
      self._finish_pending(block=True)

  def check(self) -> None:
    """Raises CheckpointError now if a background save has already failed (never blocks)."""
    self._finish_pending(block=False)

  def wait(self) -> None:
    """Waits for a background save; raises CheckpointError if it failed."""
    self._finish_pending(block=True)

  def _finish_pending(self, block: bool) -> None:
    with self._errors_as_checkpoint_error():
      if block:
        self._mngr.wait_until_finished()
      else:
        self._mngr.check_for_errors()
    if block:
      self._pending = None

  @contextlib.contextmanager
  def _errors_as_checkpoint_error(self):
    """Orbax's failures of the pending save as one CheckpointError (its logged tracebacks held back)."""
    try:
      with _orbax_errors_held():
        yield
    except Exception as e:  # pylint: disable=broad-except
      epoch, self._pending = self._pending, None
      which = f'the checkpoint of epoch {epoch + 1}' if epoch is not None else 'a checkpoint'
      raise CheckpointError(f'could not save {which} in {self.directory}: {_save_failure_reason(e)}; '
                            'the checkpoints of earlier epochs are intact') from e

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
      legacy = 'checksums' not in meta
      if legacy and 'state' not in items:
        args['state'] = ocp.args.StandardRestore()   # as saved: needed to check the combined sums
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise _Corrupt(f'unreadable ({_first_line(e)})') from e
    if legacy:
      if 'checksum' not in meta:
        raise _Corrupt('its metadata has no checksum')
      got = legacy_checksum({name: restored[name] for name in ITEMS})
      if not np.allclose(got, meta['checksum'], rtol=1e-9, atol=0):
        raise _Corrupt(f'state and best differ from their checksum ({got} vs {meta["checksum"]})')
    else:
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
