"""Checkpoints with orbax: save every epoch, restore for evaluation, resume after a kill.

Layout: ``<workdir>/checkpoints/<epoch>/`` holds three items:
  state  the full train state (step, params, batch_stats, sim_stats, opt_state), [K, ...];
  best   the best-by-validation variables so far (params, batch_stats, sim_stats), [K, ...];
  meta   JSON: epoch, best_val_loss, best_epoch, seeds, and a checksum of both trees.
The latest ``keep`` epochs are kept; the best model travels inside every checkpoint, so it
is never lost with an old one.

Orbax writes a checkpoint into a temporary directory and renames it when complete, so a kill
during a save leaves no half checkpoint behind. A checkpoint that cannot be read, or whose
arrays do not match the checksum written beside them, is moved to ``checkpoints/corrupt/``
(never deleted) with a warning, and the one before it is used.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No readable checkpoint where one is required."""


def state_tree(state) -> dict:
  """The arrays of a TrainState (without its static fields)."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'sim_stats': state.sim_stats, 'opt_state': state.opt_state}


def checksum(tree: Any) -> list[float]:
  """[Σx, Σx²] over every leaf, in float64 on the host: detects altered checkpoint data."""
  total, total_sq = 0.0, 0.0
  with np.errstate(all='ignore'):   # Damaged data may hold NaN/inf: the comparison catches it.
    for leaf in jax.tree.leaves(jax.device_get(tree)):
      a = np.asarray(leaf, np.float64)
      total += float(a.sum())
      total_sq += float(np.square(a).sum())
  return [total, total_sq]


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointManager:
  """Epoch checkpoints of a run directory."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'no checkpoints in {self.workdir}; train there first with '
                            f'python -m pixelreg_jax.main --workdir={workdir}')
    # Read-only use simply never saves (orbax's own read_only mode only adds warnings).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only)
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'best', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, epoch: int, state, best_variables: dict, meta: dict) -> None:
    """Saves (asynchronously) the checkpoint of a finished epoch (0-based)."""
    tree = state_tree(state)
    meta = dict(meta, checksum=checksum({'state': tree, 'best': best_variables}), saved_at=time.time())
    self._mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                   best=ocp.args.StandardSave(best_variables),
                                                   meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def _restore_step(self, step: int, items: dict[str, Any]) -> dict:
    args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in items.items()}
    args['meta'] = ocp.args.JsonRestore()
    restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    meta = restored['meta']
    got = checksum({name: restored[name] for name in ('state', 'best') if name in items})
    if set(items) == {'state', 'best'} and not np.allclose(got, meta['checksum'], rtol=1e-9, atol=0):
      raise ValueError(f'checksum mismatch ({got} vs {meta["checksum"]})')
    return {**{name: restored[name] for name in items}, 'meta': meta}

  def _set_aside(self, step: int, log: Callable[[str], None]) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, 'corrupt', f'{step}-{int(time.time())}')
    if jax.process_index() == 0:   # One process moves it; the others wait for that.
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
      log(f'WARNING: checkpoint {src} is unreadable or corrupt; moved to {dst}, using the one before')
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self._mngr.reload()

  def restore(self, items: dict[str, Any], log: Callable[[str], None] = print,
              set_aside: bool = True) -> Optional[dict]:
    """The newest readable checkpoint's ``items`` (templates given) and meta, or None.

    Unreadable checkpoints are moved aside (``set_aside``) or skipped, newest first.
    """
    for step in reversed(self.all_steps()):
      try:
        return self._restore_step(step, items)
      except Exception as e:  # pylint: disable=broad-except
        if set_aside:
          self._set_aside(step, log)
        else:
          log(f'WARNING: checkpoint {os.path.join(self.directory, str(step))} is unreadable '
              f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); trying the one before')
    return None

  def restore_latest(self, state, best_variables: dict, log: Callable[[str], None] = print):
    """(state, best variables, meta) from the newest readable checkpoint, or None."""
    out = self.restore({'state': state_tree(state), 'best': best_variables}, log=log)
    if out is None:
      return None
    return state.replace(**out['state']), out['best'], out['meta']

  def restore_best(self, best_variables: dict, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """The best variables and meta, read-only; raises CheckpointError when none is readable."""
    out = self.restore({'best': best_variables}, log=log, set_aside=False)
    if out is None:
      raise CheckpointError(f'no readable checkpoint in {self.directory}')
    return out['best'], out['meta']
