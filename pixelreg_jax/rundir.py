"""What a run leaves on disk, and reading it back.

    <workdir>/
      .lock            held by the training run (``lock``)
      config.json      the run's config (``write_config``; a resume must agree: ``check_config``)
      checkpoints/     every epoch's state and the best variables so far (``checkpoint``)
      metrics.jsonl    one strict-JSON record per epoch and a final one (``MetricsWriter``)
      result.json      the test result of the best variables
      robustness.json  the evaluation record (``pixelreg_jax.evaluate``)
      a4_th0.8/ …      a population's settings, each a run directory of its own

The lock is ``flock`` on ``<workdir>/.lock``: the kernel releases it when the holding process
ends in any way (exit, exception, SIGKILL, OOM kill), so a killed run never leaves a stale
lock behind, and the next run simply takes it. The file keeps the holder's pid and host for the
message a second run gets. ``flock`` works on local file systems and on NFSv4; on file systems
without it, the lock is refused with a clear message rather than silently not held.

``load_run`` reads a trained run directory back for evaluation: its config, model and the
verified best variables of every seed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import socket
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import jsonio, models, population, train
from pixelreg_jax.errors import CheckpointError, ConfigError

LOCK_NAME = '.lock'


def ensure_directory(path: str) -> str:
  """Creates ``path`` (and its parents) if needed; returns its absolute path.

  Raises:
    ConfigError: ``path`` is an existing file (or a parent is), or it cannot be created.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={path} is an existing file, not a directory; choose a directory')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--workdir={path} cannot be created: {e.strerror}') from e
  return os.path.abspath(path)


def _holder(lock_path: str) -> str:
  try:
    with open(lock_path) as f:
      text = f.read().split()
  except OSError:
    text = []
  return f'pid {text[0]} on {text[1]}' if len(text) >= 2 else 'a process that has not written its pid yet'


@contextlib.contextmanager
def lock(path: str, enabled: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on the run directory ``path`` (which must exist) while inside.

  Args:
    path: the run directory.
    enabled: False makes this a no-op (e.g. on processes other than 0 of a multi-host run,
      which share process 0's directory and lock).

  Raises:
    ConfigError: another process holds the lock (the message names the directory and the
      holder's pid and host), or the file system offers no locks.
  """
  if not enabled:
    yield
    return
  lock_path = os.path.join(path, LOCK_NAME)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise ConfigError(f'--workdir={path} is in use by another run ({_holder(lock_path)}); wait for it '
                          'to finish, or use another --workdir') from None
      raise ConfigError(f'--workdir={path}: cannot lock {lock_path} ({e.strerror}); the file system '
                        'offers no locks') from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)   # Closing releases the lock (so does the process's death).


def training_holder(path: str) -> Optional[str]:
  """Who trains the run directory ``path`` now ('pid 12 on host'), or None when nobody does.

  A non-blocking shared ``flock`` on ``<path>/.lock``, let go at once: it fails only while a
  training holds ``lock``. It opens the file read-only and creates nothing (a read-only run
  directory can be evaluated); without the file nobody ever trained there (e.g. a copied run).
  """
  lock_path = os.path.join(path, LOCK_NAME)
  try:
    fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    # Would block: a training holds it. Anything else: a file system without locks, where no
    # training can have run (``lock`` refuses it).
    return _holder(lock_path) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
  finally:
    os.close(fd)
  return None


# ---------------------------------------------------------------------------------------
# config.json: written before training, checked on resume.
# ---------------------------------------------------------------------------------------


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (what config.json and every checkpoint hold)."""
  return json.loads(config.to_json_best_effort())


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """``saved`` with the fields it lacks (added to the schema after it was written) at their
  defaults."""
  out = dict(defaults)
  for k, v in saved.items():
    out[k] = _with_defaults(v, defaults[k]) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
  return out


def read_config(workdir: str) -> Optional[dict]:
  """The run's config.json as a dict, or None when there is none.

  Raises:
    ConfigError: it is unreadable or not a JSON object.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None
  return jsonio.read_object(path, 'a config', ConfigError, 'use a new --workdir')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json, with the fields added since it was written at their defaults.

  Raises:
    CheckpointError: ``workdir`` has no config.json (it is not a run directory).
    ConfigError: config.json is unreadable.
  """
  saved = read_config(workdir)
  if saved is None:
    raise CheckpointError(f'{workdir} is not a run directory (no config.json); '
                          'train one with python -m pixelreg_jax.main --workdir=...')
  return ml_collections.ConfigDict(_with_defaults(saved, config_dict(config_lib.base_config())))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``<workdir>/config.json``."""
  jsonio.write(os.path.join(workdir, 'config.json'), config_dict(config))


# Config fields that do not change the trained model: bookkeeping, where the data is read from,
# and how (not what) the step computes (the fused and the three-pass step, vmapped and looped
# members give equal results: tests/test_fused.py, tests/test_parallel.py). Two run directories
# that differ only in these hold the same model (report counts them once), and a run resumes
# across a change of them.
NOT_THE_MODEL = ('data_dir', 'download', 'tfds_manual_dir', 'log_every_steps', 'tensorboard', 'eval_batch_size',
                 'fused_pass', 'seed_parallelism', 'checkpoint.keep')


def model_fields(config: dict) -> dict:
  """The flattened config (``'reg.alpha'``-style keys, missing fields at their defaults) without
  the ``NOT_THE_MODEL`` fields: what makes two runs with the same seeds the same model."""
  flat = traverse_util.flatten_dict(_with_defaults(config, config_dict(config_lib.base_config())), sep='.')
  return {k: v for k, v in flat.items() if k not in NOT_THE_MODEL}


def check_same_run(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
  """Raises ConfigError unless ``saved`` (a config as a dict) and ``config`` train the same
  model: every field outside ``NOT_THE_MODEL`` agrees, except ``num_epochs`` (a run may train on).
  A field the saved config did not have yet counts as its default. ``where`` names the run."""
  old, new = model_fields(saved), model_fields(config_dict(config))
  diff = [k for k in sorted(set(old) | set(new)) if k != 'num_epochs' and old.get(k) != new.get(k)]
  if diff:
    k = diff[0]
    raise ConfigError(
        f'{where} holds a run with a different config ({k}: {old.get(k)!r} there, {new.get(k)!r} now'
        f'{f" and {len(diff) - 1} more" if len(diff) > 1 else ""}); use a new --workdir to start a new run')


def trained_epochs(workdir: str) -> int:
  """How many epochs the newest checkpoint of ``workdir`` holds (0 when it has none)."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()] if os.path.isdir(directory) else []
  return max(steps) + 1 if steps else 0


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume ``workdir`` with another configuration than its config.json's
  (``check_same_run``), or with fewer epochs than its checkpoints already hold. A directory
  without checkpoints (nothing trained yet) takes any config.

  Raises:
    ConfigError: the configs differ, or ``config.num_epochs`` is below the epochs trained.
  """
  done = trained_epochs(workdir)
  if not done:
    return
  saved = read_config(workdir)
  if saved is not None:
    check_same_run(saved, config, workdir)
  if done > config.num_epochs:
    raise ConfigError(f'{workdir} holds a run trained for {done} epochs, more than config.num_epochs='
                      f'{config.num_epochs}; use --config.num_epochs={done} or more, or a new --workdir')


# ---------------------------------------------------------------------------------------
# metrics.jsonl.
# ---------------------------------------------------------------------------------------


class MetricsWriter:
  """``metrics.jsonl``: one strict-JSON object per epoch (NaN/inf written as null) and a final one.

  On resume after epoch E the records of later epochs (written before a kill) and earlier final
  records are dropped first, so the file never holds an epoch twice.
  """

  def __init__(self, workdir: str, tensorboard: bool = False, resume_after_epoch: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.isfile(self.path):
      self._truncate(resume_after_epoch)
    self._tb = None
    if tensorboard:
      from flax.metrics import tensorboard as tb  # Imports TF; only when asked for.
      self._tb = tb.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def _truncate(self, epochs: int) -> None:
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue   # a line cut by a kill
        if not record.get('final') and record.get('epoch', 0) <= epochs:
          keep.append(json.dumps(record))
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(''.join(line + '\n' for line in keep))
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(jsonio.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != 'step' and math.isfinite(v):
          self._tb.scalar(k, v, record.get('step', 0))
      self._tb.flush()


# ---------------------------------------------------------------------------------------
# A finished run, read back for evaluation.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """What ``load_run`` returns.

  Attributes:
    workdir: the run directory.
    config: its configuration (from ``config.json``).
    model: the ResNet.
    variables: best-by-validation variables, every leaf with a leading seed axis [K, ...],
      verified against the checksum saved with them.
    meta: checkpoint metadata (epoch, best_epoch, best_val_loss, …).
    checkpoint_epoch: the checkpoint the variables come from, as the number of epochs it had
      finished (1-based, like ``best_epoch`` in result.json).
    fallback_reason: None if it is the latest checkpoint; else why the newer ones were not
      usable (corrupt), so an evaluation can record that it used an older one.
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: models.ResNet
  variables: dict
  meta: dict
  checkpoint_epoch: int = 0
  fallback_reason: Optional[str] = None

  @property
  def num_seeds(self) -> int:
    return self.config.num_seeds

  @property
  def seeds(self) -> list[int]:
    return [self.config.seed + k for k in range(self.config.num_seeds)]

  @property
  def family(self) -> str:
    return data_lib.get_info(self.config.dataset).family

  @property
  def checkpoint_record(self) -> dict:
    """Which checkpoint was evaluated, for robustness.json: epoch, best epochs, fallback."""
    return {'checkpoint_epoch': self.checkpoint_epoch,
            'best_epoch': [int(e) + 1 for e in self.meta.get('best_epoch', [])],
            'fallback_reason': self.fallback_reason}

  def model_input(self, images):
    """uint8 native images -> [0, 1] images at their native size (the space attacks perturb)."""
    return pipe.to_unit(images, self.config.model.channels)

  def logits_fn(self, variables: dict):
    """[0, 1] native-size images -> logits of the model with ``variables`` (one seed), inference mode."""
    size = config_lib.input_size(self.config)

    def fn(x):
      return self.model.apply(variables, pipe.to_network(x, size, self.family), train=False)[0]
    return fn

  def seed_variables(self, k: int) -> dict:
    return jax.tree.map(lambda v: v[k], self.variables)


def load_run(workdir: str, log: Optional[Callable[[str], None]] = None) -> Run:
  """Restores the best variables of every seed of a run directory (read-only, verified).

  A corrupt newest checkpoint is skipped with a warning (``log`` if given, else absl logging)
  and recorded in ``Run.fallback_reason``.

  Raises:
    CheckpointError: no config.json, no usable checkpoint, or a checkpoint of another model.
  """
  config = load_config(workdir)
  model = train.create_model(config)
  tx = train.create_optimizer(config, 1)
  keys = population.seed_keys(population.members(config).seed)
  template = jax.eval_shape(jax.vmap(lambda k: train.create_train_state(k, config, model, tx).variables()), keys.init)
  template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
  manager = ckpt_lib.CheckpointManager(workdir, read_only=True)
  variables, meta = manager.restore_best(template, log=log)
  restored = manager.last_restore
  return Run(workdir, config, model, variables, meta, checkpoint_epoch=restored.epoch,
             fallback_reason=restored.fallback_reason)


# ---------------------------------------------------------------------------------------
# A population: each setting as a run directory of its own.
# ---------------------------------------------------------------------------------------


def setting_config(config: ml_collections.ConfigDict, alpha: float, threshold: float) -> ml_collections.ConfigDict:
  """The config of one population setting: a plain multi-seed run with that (α, Th)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.population = ''
  c.reg.alpha, c.reg.threshold = float(alpha), float(threshold)
  return c


def export_settings(config: ml_collections.ConfigDict, fit, workdir: str, write_files: bool = True) -> list[str]:
  """Writes each setting of a finished population run as its own run directory.

  ``<workdir>/<a…_th…>/`` gets config.json (that setting as a plain ``num_seeds`` run),
  checkpoints (its members' final state and best variables) and result.json: exactly what
  training that setting alone would have written, so ``evaluate``, ``report`` and ``analysis``
  take it as it is. ``fit`` is the population's ``trainer.Fit``. Every process calls this (orbax
  saves together); ``write_files`` on one.
  """
  c, k = config, config.num_seeds
  out = []
  for s, (alpha, threshold) in enumerate(config_lib.settings(c)):
    sel = slice(s * k, (s + 1) * k)
    wd = os.path.join(workdir, config_lib.setting_name(alpha, threshold))
    take = lambda tree: jax.tree.map(lambda x: x[sel], tree)  # noqa: E731
    best_val = fit.best.val_loss[sel]
    setting = setting_config(c, alpha, threshold)
    meta = {'epoch': c.num_epochs - 1, 'best_val_loss': [jsonio.number(v) for v in best_val],
            'best_epoch': fit.best.epoch[sel].tolist(), 'num_seeds': k, 'num_members': k, 'seed': c.seed,
            'exported_from': os.path.abspath(workdir), 'config': config_dict(setting)}
    if write_files:
      os.makedirs(wd, exist_ok=True)
      write_config(setting, wd)
    manager = ckpt_lib.CheckpointManager(wd, keep=1)
    if c.num_epochs - 1 not in manager.all_steps():   # else exported by an earlier run of the same epochs
      manager.save(c.num_epochs - 1, take(fit.final_state), take(fit.best.variables), meta)
    acc, loss = np.asarray(fit.test['accuracy'])[sel], np.asarray(fit.test['loss'])[sel]
    if write_files:
      jsonio.write(os.path.join(wd, 'result.json'), {
          'test_accuracy': float(acc.mean()), 'test_loss': float(loss.mean()),
          'best_epoch': [int(e) + 1 for e in fit.best.epoch[sel]], 'best_val_loss': meta['best_val_loss'],
          'num_seeds': k, 'test_accuracy_per_member': acc.tolist(), 'test_loss_per_member': loss.tolist(),
          'workdir': wd, 'population': os.path.abspath(workdir)})
    out.append(wd)
  return out
