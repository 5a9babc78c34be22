"""A training run: what it is built from, its compiled programs, and the epoch loop.

    trainer = create_trainer(config)          # data, members, model, optimizer → compiled programs
    fit = train_loop(trainer, workdir)        # every epoch, resuming from workdir's checkpoints
    fit.result                                # what result.json holds

``create_trainer`` builds a run from plain parts (``load_data``, ``population.members``, the
split of every member, the regularizer's targets, ``train.create_model`` / ``create_optimizer``)
and hands them to ``Trainer``, which keeps only the compiled programs over the M members:
``init_state``, ``epoch_order``, ``step``, ``evaluate``. ``train_loop`` runs the epochs (metrics,
finite-loss checks, the best variables by validation loss, a checkpoint per epoch) and returns a
``Fit``; ``train_and_evaluate`` is what ``main`` calls: lock, config check, loop, result.json.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import jsonio, parallel, population, progress, regularizers, rundir, train
from pixelreg_jax.errors import ConfigError, TrainingError

Array = jax.Array


def load_data(config: ml_collections.ConfigDict) -> dict:
  """Host arrays of a run: {'train_x', 'train_y', 'test_x', 'test_y'} (uint8 images [N, H, W, C],
  int32 labels [N]) and, when regularizing, 'reg' (``regularizers.load``). Fails fast with one
  line when data is missing."""
  kw = {'download': config.download, 'manual_dir': config.tfds_manual_dir}
  train_x, train_y = data_lib.load_split(config.dataset, 'train', config.data_dir, **kw)
  test_x, test_y = data_lib.load_split(config.dataset, 'test', config.data_dir, **kw)
  reg = regularizers.load(config, train_x, train_y) if config_lib.regularized(config) else None
  return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y, 'reg': reg}


@dataclasses.dataclass
class Parts:
  """What a run is built from (host side; nothing compiled yet).

  Attributes:
    config: the validated config.
    members: the population (``population.members``), M members.
    keys: the members' PRNG keys, [M, 2] each.
    host: the host arrays (``load_data``), with the regularizer's images under 'reg' when used.
    train_indices: [M, N_train] each member's training images (indices into host['train_x']).
    val_indices: M arrays of each member's validation images.
    regularizer: the similarity regularizer, or None when every member has α = 0.
    model, tx: the network and the optimizer.
    mesh: the devices.
  """
  config: ml_collections.ConfigDict
  members: population.Member
  keys: population.SeedKeys
  host: dict
  train_indices: np.ndarray
  val_indices: list[np.ndarray]
  regularizer: Optional[regularizers.Regularizer]
  model: object
  tx: object
  mesh: jax.sharding.Mesh

  @property
  def steps_per_epoch(self) -> int:
    return self.train_indices.shape[1] // self.config.batch_size


def build_parts(config: ml_collections.ConfigDict, host: Optional[dict] = None,
                mesh: Optional[jax.sharding.Mesh] = None) -> Parts:
  """Validates ``config``, loads the data (unless ``host`` is given), splits it per member and
  checks what needs the data's sizes: every fault is one ``ConfigError`` line before compiling."""
  config_lib.validate(config)
  m = population.members(config)
  host = dict(host) if host is not None else load_data(config)
  keys = population.seed_keys(m.seed)
  splits = [population.split_indices(k, len(host['train_x']), config.val_fraction, config.train_subset)
            for k in keys.split]
  regularizer = regularizers.optional(config, m.alpha)
  if regularizer and host.get('reg') is None:   # host data given without the regularizer's part
    host['reg'] = regularizers.load(config, host['train_x'], host['train_y'])
  train_indices = np.stack([s[0] for s in splits])
  config_lib.validate_against_data(config, train_indices.shape[1],
                                   len(host['reg']['images']) if regularizer else 0)
  mesh = mesh if mesh is not None else parallel.make_mesh()
  parallel.check_batch(config.batch_size, mesh, config.reg.pairs_per_step if regularizer else 0)
  steps_per_epoch = train_indices.shape[1] // config.batch_size
  model, tx = train.create_model(config), train.create_optimizer(config, steps_per_epoch)
  check_memory(config, model, tx, keys, mesh)
  return Parts(config, m, keys, host, train_indices, [s[1] for s in splits], regularizer, model, tx, mesh)


def check_memory(config: ml_collections.ConfigDict, model, tx, keys: population.SeedKeys,
                 mesh: jax.sharding.Mesh) -> None:
  """Refuses a run whose train state cannot fit, before anything is allocated or compiled.

  What is counted is a lower bound of the step's memory on each device: the state of every member
  (parameters, optimizer state, statistics; replicated) and one gradient of the parameters, from
  the state's shapes alone (``jax.eval_shape``). Activations come on top, so a run that passes
  may still not fit; one that fails cannot.

  Raises:
    ConfigError: the bound exceeds what the device can hold (``parallel.usable_memory_bytes``).
  """
  usable = parallel.usable_memory_bytes(mesh.devices.flat[0])
  if usable is None:
    return
  state = jax.eval_shape(jax.vmap(lambda k: train.create_train_state(k, config, model, tx)), keys.init)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
  need = nbytes(state) + nbytes(state.params)
  if need > usable:
    raise ConfigError(f'the train state of {len(keys.init)} model(s) ({config.model.name}, config.model.width='
                      f'{config.model.width}) needs at least {need / 2**30:.1f} GiB per device (parameters, '
                      f'gradients, optimizer state), more than the {usable / 2**30:.1f} GiB available; lower '
                      'config.model.width or the number of models')


class Trainer:
  """The compiled programs of a run over its M members: ``init_state``, ``epoch_order``,
  ``step``, ``evaluate`` (and ``step_cost``). Build one with ``create_trainer``."""

  def __init__(self, parts: Parts):
    p, c = parts, parts.config
    self.parts, self.config, self.members, self.keys, self.host = p, c, p.members, p.keys, p.host
    self.M = len(p.members.seed)
    self.model, self.tx, self.mesh, self.regularizer = p.model, p.tx, p.mesh, p.regularizer
    self.train_indices, self.steps_per_epoch = p.train_indices, p.steps_per_epoch
    self.spec = train.pipeline_spec(c)
    rep = parallel.replicated(self.mesh)
    reg = regularizers.prepare(c, self.host['reg']) if self.regularizer else None
    self.data = jax.device_put(pipe.TrainData(self.host['train_x'], self.host['train_y'], reg), rep)
    self.train_indices_dev = jax.device_put(self.train_indices, rep)
    # Validation sets of all members, stacked [M, ...] (same size: the split fraction is fixed).
    self.val_sets = None if not len(p.val_indices[0]) else jax.device_put(jax.tree.map(
        lambda *xs: np.stack(xs), *[train.make_eval_set(self.host['train_x'][v], self.host['train_y'][v],
                                                        c.eval_batch_size) for v in p.val_indices]), rep)
    self.test_set = jax.device_put(train.make_eval_set(self.host['test_x'], self.host['test_y'],
                                                       c.eval_batch_size), rep)

    init = jax.jit(jax.vmap(lambda k: train.create_train_state(k, c, self.model, self.tx)), out_shardings=rep)
    self._init = lambda: init(self.keys.init)

    # One setting for all members: α and Th are compile-time constants (α = 0 traces no pair
    # pass); several settings: per-member traced values.
    shared = len(set(zip(self.members.alpha.tolist(), self.members.threshold.tolist()))) == 1
    const_alpha, const_th = float(self.members.alpha[0]), float(self.members.threshold[0])
    eps, spec, fused, regularizer = float(c.reg.eps), self.spec, bool(c.fused_pass), self.regularizer
    batch_sharding = parallel.batch_sharding(self.mesh)

    def one_step(state, keys, hp, order, data, step_in_epoch):
      alpha, threshold = (const_alpha, const_th) if shared else (hp.alpha, hp.threshold)
      batch = pipe.train_batch(data, order, step_in_epoch, state.step, keys.augment, spec)
      if regularizer is not None:
        batch.update(regularizers.pair_batch(data.reg, keys.pairs, state.step, threshold, spec))
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return train.train_step(state, batch, alpha=alpha, eps=eps, fused=fused)

    mode = population.seed_mode(c)
    self._hparams = population.Member(jnp.asarray(self.members.alpha), jnp.asarray(self.members.threshold),
                                      jnp.asarray(self.members.seed, jnp.int32))
    self._step_jit = jax.jit(population.seeded(one_step, self.M, (0, 0, 0, 0, None, None), mode),
                             donate_argnums=(0,))
    self._epoch_order_jit = jax.jit(jax.vmap(pipe.epoch_order, in_axes=(0, 0, None)))

    def one_eval(variables, ds):
      return train.evaluate_dataset(variables, self.model.apply, ds, spec)

    self._eval_shared = jax.jit(population.seeded(one_eval, self.M, (0, None), mode))    # one dataset, all members
    self._eval_per_member = jax.jit(population.seeded(one_eval, self.M, (0, 0), mode))   # a dataset per member

  def init_state(self) -> train.TrainState:
    """The initial state of every member, stacked [M, ...]."""
    return self._init()

  def epoch_order(self, epoch: int) -> Array:
    """[M, N_train] the order in which each member visits its training images in ``epoch``."""
    return self._epoch_order_jit(self.keys.shuffle, self.train_indices_dev, epoch)

  def step(self, state: train.TrainState, order: Array, step_in_epoch: int) -> tuple[train.TrainState, dict]:
    """One training step of every member (``state`` is donated): (new state, metrics [M])."""
    return self._step_jit(state, self.keys, self._hparams, order, self.data, step_in_epoch)

  def step_cost(self) -> dict:
    """XLA's cost analysis of the train step, from its lowered HLO (no compilation; per device;
    'flops' among its keys)."""
    state = jax.eval_shape(self.init_state)
    order = jax.ShapeDtypeStruct((self.M, self.train_indices.shape[1]), np.int32)
    hparams = jax.eval_shape(lambda: self._hparams)
    cost = self._step_jit.lower(state, self.keys, hparams, order, self.data, 0).cost_analysis()
    return dict(cost[0] if isinstance(cost, (list, tuple)) else cost)

  def evaluate(self, variables: dict, split: str) -> Optional[dict]:
    """{'loss': [M], 'accuracy': [M]} on 'val' (each member's own validation images; None when
    there are none) or 'test'."""
    if split == 'val':
      return None if self.val_sets is None else jax.device_get(self._eval_per_member(variables, self.val_sets))
    return jax.device_get(self._eval_shared(variables, self.test_set))

  def member_name(self, m: int) -> str:
    return population.member_name(self.config, self.members, m)


def create_trainer(config: ml_collections.ConfigDict, host: Optional[dict] = None,
                   mesh: Optional[jax.sharding.Mesh] = None) -> Trainer:
  """``Trainer(build_parts(config, host, mesh))``."""
  return Trainer(build_parts(config, host, mesh))


# ---------------------------------------------------------------------------------------
# The epoch loop.
# ---------------------------------------------------------------------------------------


class BestSoFar:
  """Per member: the variables of the epoch with the lowest validation loss so far.

  A non-finite validation loss never counts as an improvement; ``update`` with ``val_loss=None``
  (no validation set) selects every epoch, i.e. the last one.
  """

  def __init__(self, variables: dict, num_members: int):
    self.variables = jax.tree.map(jnp.copy, variables)
    self.val_loss = np.full(num_members, np.inf)
    self.epoch = np.full(num_members, -1)

  def update(self, variables: dict, val_loss: Optional[np.ndarray], epoch: int) -> np.ndarray:
    """Keeps ``variables`` for the members whose ``val_loss`` improved; returns that mask [M]."""
    if val_loss is None:
      improved = np.ones_like(self.epoch, bool)
      val_loss = np.full(self.val_loss.shape, np.nan)
    else:
      improved = np.isfinite(val_loss) & (val_loss < self.val_loss)
    if improved.any():
      mask = jnp.asarray(improved)
      self.variables = jax.tree.map(lambda new, old: jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                                    variables, self.variables)
      self.val_loss = np.where(improved, val_loss, self.val_loss)
      self.epoch = np.where(improved, epoch, self.epoch)
    return improved

  def meta(self) -> dict:
    return {'best_val_loss': [jsonio.number(v) for v in self.val_loss], 'best_epoch': self.epoch.tolist()}

  def restore(self, variables: dict, meta: dict) -> None:
    self.variables = variables
    self.val_loss = np.array([np.inf if v is None else v for v in meta['best_val_loss']], np.float64)
    self.epoch = np.asarray(meta['best_epoch'])


@dataclasses.dataclass
class Fit:
  """What ``train_loop`` returns.

  Attributes:
    result: the run's result (what result.json holds): test accuracy and loss of the best
      variables (means over members, and per member when M > 1), best epochs, timing.
    final_state: the state after the last epoch, [M, ...].
    best: the best variables by validation loss, their epochs and losses (``BestSoFar``).
    test: {'loss', 'accuracy'}: [M] of the best variables on the test split.
    history: the per-epoch records written to metrics.jsonl.
  """
  result: dict
  final_state: train.TrainState
  best: BestSoFar
  test: dict
  history: list[dict]


_add_trees = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))   # one dispatch per step


def _check_finite(trainer: Trainer, what: str, values: np.ndarray, epoch: int, manager) -> None:
  bad = ~np.isfinite(np.asarray(values, np.float64))
  if not bad.any():
    return
  names = [trainer.member_name(m) for m in np.flatnonzero(bad)]
  kept = (f'the last good checkpoint (epoch {epoch}) is kept in {manager.directory}' if manager and epoch
          else 'no checkpoint was written')
  raise TrainingError(f'training diverged: {what} is not finite in epoch {epoch + 1} for {", ".join(names)}; '
                      f'{kept}; lower config.optim.learning_rate or config.reg.alpha')


def train_loop(trainer: Trainer, workdir: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Fit:
  """Trains all epochs (resuming from ``workdir`` when it has checkpoints) and tests the best.

  Progress goes to ``log`` (default: absl logging). A non-finite training or validation loss
  stops the run with ``TrainingError`` before anything of that epoch is saved. In a
  multi-process run every process trains; only process 0 logs and writes files (checkpoints
  are written by all processes together, as orbax requires).
  """
  c, spe = trainer.config, trainer.steps_per_epoch
  main_process = jax.process_index() == 0
  log = (log or logging.info) if main_process else (lambda s: None)
  manager = ckpt_lib.CheckpointManager(workdir, keep=c.checkpoint.keep) if workdir else None
  state = trainer.init_state()
  best = BestSoFar(state.variables(), trainer.M)
  start_epoch = 0
  if manager is not None:
    restored = manager.restore_latest(state, best.variables, log=log)
    if restored is not None:
      state, best_vars, meta = restored
      if 'config' in meta:   # the config it was trained with travels in every checkpoint
        rundir.check_same_run(meta['config'], c, manager.directory)
      best.restore(best_vars, meta)
      start_epoch = meta['epoch'] + 1
      why = manager.last_restore.fallback_reason
      log(f'resumed from {manager.directory} after epoch {start_epoch}'
          + (f' (an older checkpoint: {why})' if why else ''))
  writer = rundir.MetricsWriter(workdir, c.tensorboard, start_epoch) if workdir and main_process else None

  clock = progress.Progress(spe * (c.num_epochs - start_epoch))
  images_per_step = trainer.M * (c.batch_size + (2 * c.reg.pairs_per_step if trainer.regularizer else 0))
  settings = ', '.join(f'α={a:g} Th={t:g}' for a, t in config_lib.settings(c))
  log(f'training {c.model.name} (width {c.model.width}) on {c.dataset}: {trainer.train_indices.shape[1]} images, '
      f'{spe} steps/epoch × {c.num_epochs} epochs, {settings} × seeds {c.seed}..{c.seed + c.num_seeds - 1} '
      f'({trainer.M} model(s)), reg={c.reg.name}:{c.reg.dataset}[:{c.reg.num_images}], '
      f'{"fused" if c.fused_pass else "three-pass"} step, {len(trainer.mesh.devices.flat)} device(s): '
      f'{jax.devices()[0].platform}')
  if trainer.val_sets is None:
    log('no validation images (config.val_fraction=0): the last epoch is the result')
  t_run, history = time.time(), []
  for epoch in range(start_epoch, c.num_epochs):
    order = trainer.epoch_order(epoch)
    t_epoch, sums, logged = time.time(), None, 0
    for i in range(spe):
      state, metrics = trainer.step(state, order, i)
      sums = metrics if sums is None else _add_trees(sums, metrics)
      if i == 0:
        jax.block_until_ready(metrics)
        clock.skip(1)
        clock.start()
        logged = 1
      elif (i + 1) % c.log_every_steps == 0 or i + 1 == spe:
        m = progress.member_means(metrics)
        clock.advance(i + 1 - logged)
        logged = i + 1
        log(f'epoch {epoch + 1}/{c.num_epochs} step {i + 1}/{spe}: {progress.console_line(m)} | '
            f'{clock.rate * images_per_step:.0f} img/s | ETA {progress.format_duration(clock.eta())}')
    epoch_sums = jax.device_get(sums)
    train_loss = np.asarray(epoch_sums['loss']) / spe                      # [M]
    _check_finite(trainer, 'the training loss', train_loss, epoch, manager)
    train_means = {f'train_{k}': float(np.mean(v)) / spe for k, v in epoch_sums.items()}
    variables = state.variables()
    val = trainer.evaluate(variables, 'val')
    val_loss = None if val is None else np.asarray(val['loss'], np.float64)
    if val_loss is not None:
      _check_finite(trainer, 'the validation loss', val_loss, epoch, manager)
    improved = best.update(variables, val_loss, epoch)
    record = {'epoch': epoch + 1, 'step': int((epoch + 1) * spe), **train_means,
              'learning_rate': float(train.learning_rate_schedule(c, spe)(epoch * spe)),
              'epoch_seconds': time.time() - t_epoch}
    if val is not None:
      record.update(val_loss=float(val_loss.mean()), val_accuracy=float(np.mean(val['accuracy'])))
      if trainer.M > 1:
        record.update(val_loss_per_member=val_loss.tolist(),
                      val_accuracy_per_member=np.asarray(val['accuracy']).tolist())
    history.append(record)
    if writer:
      writer.write(record)
    val_text = (f'val loss {record["val_loss"]:.4f} acc {record["val_accuracy"]:.4f}'
                if val is not None else f'train loss {record["train_loss"]:.4f}')
    log(f'epoch {epoch + 1}/{c.num_epochs} done in {progress.format_duration(record["epoch_seconds"])}: {val_text}'
        + (' (best)' if improved.all() and val is not None else ''))
    if manager is not None:
      manager.save(epoch, state, best.variables, {'epoch': epoch, **best.meta(), 'num_seeds': c.num_seeds,
                                                  'num_members': trainer.M, 'seed': c.seed,
                                                  'config': rundir.config_dict(c)})

  test = trainer.evaluate(best.variables, 'test')
  result = {
      'test_accuracy': float(np.mean(test['accuracy'])),
      'test_loss': float(np.mean(test['loss'])),
      'best_epoch': [int(e) + 1 for e in best.epoch],
      'best_val_loss': [jsonio.number(v) for v in best.val_loss],
      'selection': 'best validation loss' if trainer.val_sets is not None else 'last epoch (no validation images)',
      'num_seeds': c.num_seeds,
      'num_members': trainer.M,
      'train_seconds': time.time() - t_run,
      'workdir': workdir,
  }
  if trainer.M > 1:
    result['test_accuracy_per_member'] = np.asarray(test['accuracy']).tolist()
    result['test_loss_per_member'] = np.asarray(test['loss']).tolist()
  if len(config_lib.settings(c)) > 1:
    result['members'] = [trainer.member_name(m) for m in range(trainer.M)]
  if writer:
    writer.write({'final': True, **result})
  return Fit(result, state, best, test, history)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config`` into ``workdir`` (resuming if it has checkpoints); returns the result.

  The workdir is locked for the run (a second run on it stops with one line); a workdir with
  checkpoints must have been started with the same config (``rundir.check_config``);
  config.json is written before any data is loaded. A population's settings are then written
  as run directories of their own (``rundir.export_settings``).
  """
  config_lib.validate(config)
  main_process = jax.process_index() == 0
  rundir.ensure_directory(workdir)
  with rundir.lock(workdir, enabled=main_process):
    rundir.check_config(config, workdir)
    if main_process:
      rundir.write_config(config, workdir)
    fit = train_loop(create_trainer(config), workdir)
    result = fit.result
    if len(config_lib.settings(config)) > 1:
      result['settings'] = rundir.export_settings(config, fit, workdir, write_files=main_process)
    if main_process:
      jsonio.write(f'{workdir}/result.json', result)
  return result
