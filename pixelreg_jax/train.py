"""Training: state, the jitted step (CE + α·L_sim), evaluation, and the epoch loop.

Shapes: a run trains K = ``config.num_seeds`` independent models at once. Every array of the
train state carries a leading seed axis [K, ...]; for K = 1 the step is the plain single-model
step (the axis is squeezed inside jit), for K > 1 it is ``jax.vmap``-ed over the seed axis.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models
from pixelreg_jax import parallel
from pixelreg_jax import similarity

Array = jax.Array


class TrainState(train_state.TrainState):
  """Flax TrainState plus the model's non-parameter state."""
  batch_stats: Any = None
  sim_stats: Any = None

  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats, 'sim_stats': self.sim_stats}


# ---------------------------------------------------------------------------------------
# Model, optimizer, state.
# ---------------------------------------------------------------------------------------


def create_model(config: ml_collections.ConfigDict) -> models.ResNet:
  info = data_lib.get_info(config.dataset)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.create_model(config.model.name, info.num_classes, width=config.model.width,
                             beta=config.reg.beta, dtype=dtype)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """lr = lr₀ · decay^((epoch mod cycle) div step): Li et al.'s 20-epoch cycles of 4-epoch steps."""
  o = config.optim

  def schedule(count):
    epoch = count // steps_per_epoch
    return o.learning_rate * jnp.power(o.lr_decay, (epoch % o.lr_cycle_epochs) // o.lr_step_epochs)

  return schedule


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum (PyTorch semantics) and optional L2 weight decay."""
  parts = []
  if config.optim.weight_decay:
    parts.append(optax.add_decayed_weights(config.optim.weight_decay))
  parts.append(optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=config.optim.momentum))
  return optax.chain(*parts)


def create_train_state(rng: Array, config: ml_collections.ConfigDict, model: models.ResNet,
                       tx: optax.GradientTransformation) -> TrainState:
  """A single model's state, initialised from ``rng``."""
  size = config_lib.input_size(config)
  shape = (1, size, size, config.model.channels)
  variables = model.init(rng, jnp.zeros(shape, jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], sim_stats=variables['sim_stats'])


# ---------------------------------------------------------------------------------------
# Steps (single model; see ``seeded`` for the seed axis).
# ---------------------------------------------------------------------------------------


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy: [B, C] logits, [B] int labels -> scalar."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def train_step(state: TrainState, batch: dict, *, alpha: float, eps: float = 1e-5) -> tuple[TrainState, dict]:
  """One SGD step on L = CE + α·L_sim.

  Args:
    state: one model's TrainState.
    batch: {'image': [B,S,S,C], 'label': [B]}, and for α > 0 {'reg_a', 'reg_b': [P,S,S,C],
      'target': [P]}.
    alpha: regularization strength (static). For α = 0 no similarity pass is traced.
    eps: ε of the similarity loss.

  Returns:
    (new state, metrics {'loss', 'ce_loss', 'accuracy'} and for α > 0 {'sim_loss',
    'model_sim_mean'}, as scalars).
  """

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats, 'sim_stats': state.sim_stats}
    (logits, _), upd = state.apply_fn(variables, batch['image'], train=True, mutable=['batch_stats'])
    ce = cross_entropy_loss(logits, batch['label'])
    new_stats = {'batch_stats': upd['batch_stats'], 'sim_stats': state.sim_stats}
    metrics = {'ce_loss': ce, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
    loss = ce
    if alpha > 0:
      (s_model, _), new_stats = state.apply_fn(
          {**variables, 'batch_stats': upd['batch_stats']},
          batch['reg_a'], batch['reg_b'], train=True, method=models.ResNet.similarity,
          mutable=['batch_stats', 'sim_stats'])
      sim = similarity.similarity_loss(s_model, batch['target'], eps)
      loss = ce + alpha * sim
      metrics.update(sim_loss=sim, model_sim_mean=jnp.mean(s_model))
    metrics['loss'] = loss
    return loss, (new_stats, metrics)

  grads, (new_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats['batch_stats'],
                                    sim_stats=new_stats['sim_stats'])
  return new_state, metrics


def eval_step(variables: dict, apply_fn: Callable, images: Array, labels: Array, mask: Array) -> dict:
  """Sums over one batch in inference mode: {'loss_sum', 'correct', 'count'}."""
  logits, _ = apply_fn(variables, images, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss_sum': jnp.sum(ce * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          'count': jnp.sum(mask)}


def seeded(fn: Callable, num_seeds: int, in_axes, mode: str = 'vmap') -> Callable:
  """Applies a single-model function over the leading seed axis.

  ``in_axes`` marks which arguments carry the seed axis (0) and which are shared (None).
  ``mode='vmap'`` batches the seeds (convolutions become grouped convolutions: fills a GPU);
  ``mode='loop'`` runs them one after another inside the same program (unrolled: compile time
  grows with K; on CPUs this is ~2.7× faster than vmap, whose grouped convolutions XLA:CPU runs
  slowly, while a ``lax.map`` loop was slower still). For one seed the axis is squeezed.
  """
  if num_seeds == 1:
    def single(*args):
      args = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
      return jax.tree.map(lambda x: x[None], fn(*args))
    return single
  if mode == 'vmap':
    return jax.vmap(fn, in_axes=in_axes)

  def looped(*args):
    outs = [fn(*[a if ax is None else jax.tree.map(lambda x, k=k: x[k], a) for a, ax in zip(args, in_axes)])
            for k in range(num_seeds)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return looped


def seed_mode(config: ml_collections.ConfigDict) -> str:
  """'vmap' or 'loop' for ``config.seed_parallelism`` ('auto': loop on CPU, vmap elsewhere)."""
  if config.seed_parallelism == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return config.seed_parallelism


# ---------------------------------------------------------------------------------------
# Data preparation.
# ---------------------------------------------------------------------------------------


@flax.struct.dataclass
class SeedKeys:
  """Per-seed PRNG keys, each [K, 2] (stacked over seeds)."""
  init: Array
  shuffle: Array
  augment: Array
  pairs: Array
  split: Array


def seed_keys(config: ml_collections.ConfigDict) -> SeedKeys:
  """Keys of seeds seed, seed+1, …: a model with seed s is the same whatever K it trains in."""
  def one(s):
    k = jax.random.PRNGKey(s)
    return SeedKeys(*(jax.random.fold_in(k, i) for i in range(5)))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[one(config.seed + k) for k in range(config.num_seeds)])


def split_indices(key: Array, num_images: int, val_fraction: float, train_subset: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices) of the train split, disjoint, deterministic in ``key``.

  The validation images are ``round(val_fraction·N)`` (at least one when the fraction > 0)
  images of a seeded permutation; training uses the rest, or its first ``train_subset``.
  """
  perm = np.asarray(jax.random.permutation(key, num_images))
  n_val = max(1, int(round(val_fraction * num_images))) if val_fraction > 0 else 0
  val, train = perm[:n_val], perm[n_val:]
  if train_subset:
    train = train[:train_subset]
  return train.astype(np.int32), val.astype(np.int32)


@flax.struct.dataclass
class EvalSet:
  """A dataset padded to whole batches: images [nb, B, H, W, C] uint8, labels/mask [nb, B]."""
  images: Array
  labels: Array
  mask: Array


def make_eval_set(images: np.ndarray, labels: np.ndarray, batch_size: int) -> EvalSet:
  n = len(images)
  nb = max(1, math.ceil(n / batch_size))
  pad = nb * batch_size - n
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  return EvalSet(images.reshape((nb, batch_size) + images.shape[1:]), labels.reshape(nb, batch_size),
                 mask.reshape(nb, batch_size))


def evaluate_dataset(variables: dict, apply_fn: Callable, ds: EvalSet, spec: pipe.PipelineSpec) -> dict:
  """Mean loss and accuracy of one model on a padded dataset (jit-able; lax.map over batches)."""
  def body(args):
    images, labels, mask = args
    return eval_step(variables, apply_fn, pipe.network_input(images, spec), labels, mask)
  sums = jax.tree.map(jnp.sum, jax.lax.map(body, (ds.images, ds.labels, ds.mask)))
  return {'loss': sums['loss_sum'] / sums['count'], 'accuracy': sums['correct'] / sums['count']}


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


_add_trees = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))   # one dispatch per step


def _scalars(tree) -> dict:
  return {k: float(np.mean(v)) for k, v in jax.device_get(tree).items()}


class MetricsWriter:
  """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard if asked)."""

  def __init__(self, workdir: str, tensorboard: bool = False):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if tensorboard:
      from flax.metrics import tensorboard as tb  # Imports TF; only when asked for.
      self._tb = tb.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != 'step':
          self._tb.scalar(k, v, record.get('step', 0))
      self._tb.flush()


def load_data(config: ml_collections.ConfigDict) -> dict:
  """Host arrays of the run: train/test split and the regularization images. Fails fast."""
  kw = {'download': config.download, 'manual_dir': config.tfds_manual_dir}
  train_x, train_y = data_lib.load_split(config.dataset, 'train', config.data_dir, **kw)
  test_x, test_y = data_lib.load_split(config.dataset, 'test', config.data_dir, **kw)
  if config.reg.alpha > 0:
    if config.reg.dataset == config.dataset and config.reg.split == 'train':
      reg_x = train_x
    else:
      reg_x, _ = data_lib.load_split(config.reg.dataset, config.reg.split, config.data_dir,
                                     num_examples=config.reg.num_images, **kw)
  else:
    reg_x = train_x[:2]
  return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y, 'reg_x': reg_x}


def pipeline_spec(config: ml_collections.ConfigDict) -> pipe.PipelineSpec:
  return pipe.PipelineSpec(image_size=config_lib.input_size(config), channels=config.model.channels,
                           family=data_lib.get_info(config.dataset).family, augment=config.augment,
                           batch_size=config.batch_size, pairs_per_step=config.reg.pairs_per_step,
                           regularize=config.reg.alpha > 0, reg_keep_size=config.reg.keep_size)


def similarity_targets(reg_images: np.ndarray, config: ml_collections.ConfigDict) -> Array:
  """S^target [N, N] from the regularization images, at the size the network sees them."""
  size = None if config.reg.keep_size else config_lib.input_size(config)
  x = pipe.model_input(jnp.asarray(reg_images), size, config.model.channels)
  return similarity.threshold_targets(similarity.pixel_similarity(x), config.reg.threshold)


class Trainer:
  """Builds everything a run needs; ``fit`` runs the epochs. Used by main, tests and benchmarks."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None,
               host_data: Optional[dict] = None, mesh: Optional[jax.sharding.Mesh] = None):
    config_lib.validate(config)
    self.config = config
    self.workdir = workdir
    self.host = host_data if host_data is not None else load_data(config)
    self.num_train_total = len(self.host['train_x'])
    self.keys = seed_keys(config)
    splits = [split_indices(k, self.num_train_total, config.val_fraction, config.train_subset)
              for k in self.keys.split]
    self.train_indices = np.stack([s[0] for s in splits])   # [K, N_train]
    self.val_indices = [s[1] for s in splits]
    config_lib.validate_against_data(config, self.train_indices.shape[1], len(self.host['reg_x']))
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    parallel.check_batch(config.batch_size, self.mesh, config.reg.pairs_per_step if config.reg.alpha > 0 else 0)
    self.spec = pipeline_spec(config)
    self.steps_per_epoch = self.train_indices.shape[1] // config.batch_size
    self.model = create_model(config)
    self.tx = create_optimizer(config, self.steps_per_epoch)
    self.K = config.num_seeds
    self._build()

  # -- construction ------------------------------------------------------------------

  def _build(self):
    c, rep = self.config, parallel.replicated(self.mesh)
    reg_x = self.host['reg_x'][:c.reg.num_images] if c.reg.alpha > 0 else self.host['reg_x']
    targets = (similarity_targets(reg_x, c) if c.reg.alpha > 0 else jnp.zeros((2, 2), jnp.float32))
    self.data = jax.device_put(pipe.TrainData(self.host['train_x'], self.host['train_y'], reg_x, targets), rep)
    self.train_indices_dev = jax.device_put(self.train_indices, rep)
    # Validation sets of all seeds, stacked [K, ...] (same size: the split fraction is fixed).
    self.val_sets = jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *[
        make_eval_set(self.host['train_x'][v], self.host['train_y'][v], c.eval_batch_size)
        for v in self.val_indices]), rep)
    self.test_set = jax.device_put(make_eval_set(self.host['test_x'], self.host['test_y'], c.eval_batch_size), rep)

    init = jax.jit(jax.vmap(lambda k: create_train_state(k, c, self.model, self.tx)), out_shardings=rep)
    self.initial_state = lambda: init(self.keys.init)

    alpha, eps, spec, K = float(c.reg.alpha), float(c.reg.eps), self.spec, self.K
    batch_sharding = parallel.batch_sharding(self.mesh)

    def one_step(state, keys, order, data, step_in_epoch):
      batch = pipe.train_batch(data, order, step_in_epoch, state.step, {'augment': keys.augment, 'pairs': keys.pairs}, spec)
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return train_step(state, batch, alpha=alpha, eps=eps)

    mode = seed_mode(c)
    self.train_step = jax.jit(seeded(one_step, K, (0, 0, 0, None, None), mode), donate_argnums=(0,))
    self.epoch_order = jax.jit(jax.vmap(pipe.epoch_order, in_axes=(0, 0, None)))

    def one_eval(variables, ds):
      return evaluate_dataset(variables, self.model.apply, ds, spec)

    self.eval_stacked = jax.jit(seeded(one_eval, K, (0, None), mode))    # one dataset, all seeds
    self.eval_per_seed = jax.jit(seeded(one_eval, K, (0, 0), mode))      # a dataset per seed

  # -- evaluation --------------------------------------------------------------------

  @staticmethod
  def eval_variables(state: TrainState) -> dict:
    return {'params': state.params, 'batch_stats': state.batch_stats, 'sim_stats': state.sim_stats}

  def evaluate_val(self, variables: dict) -> dict:
    return jax.device_get(self.eval_per_seed(variables, self.val_sets))

  def evaluate_test(self, variables: dict) -> dict:
    return jax.device_get(self.eval_stacked(variables, self.test_set))

  # -- the loop ----------------------------------------------------------------------

  def fit(self, log: Callable[[str], None] = print) -> dict:
    """Trains all epochs (resuming from ``workdir`` when it has checkpoints) and tests the best.

    In a multi-process run every process trains; only process 0 logs and writes files
    (checkpoints are written by all processes together, as orbax requires).
    """
    c = self.config
    main_process = jax.process_index() == 0
    if not main_process:
      log = lambda s: None  # noqa: E731
    writer = MetricsWriter(self.workdir, c.tensorboard) if self.workdir and main_process else None
    manager = ckpt_lib.CheckpointManager(self.workdir, keep=c.checkpoint.keep) if self.workdir else None
    state = self.initial_state()
    best = {'variables': jax.tree.map(jnp.copy, self.eval_variables(state)), 'val_loss': np.full(self.K, np.inf),
            'epoch': np.full(self.K, -1)}
    start_epoch = 0
    if manager is not None:
      restored = manager.restore_latest(state, best['variables'], log=log)
      if restored is not None:
        state, best_vars, meta = restored
        best = {'variables': best_vars, 'val_loss': np.asarray(meta['best_val_loss'], np.float64),
                'epoch': np.asarray(meta['best_epoch'])}
        start_epoch = meta['epoch'] + 1
        log(f'resumed from {manager.directory} after epoch {meta["epoch"] + 1}')

    spe, total_steps = self.steps_per_epoch, self.steps_per_epoch * c.num_epochs
    images_per_step = self.K * (c.batch_size + (2 * c.reg.pairs_per_step if c.reg.alpha > 0 else 0))
    log(f'training {c.model.name} (width {c.model.width}) on {c.dataset}: {self.train_indices.shape[1]} images, '
        f'{spe} steps/epoch × {c.num_epochs} epochs, seeds {c.seed}..{c.seed + self.K - 1}, '
        f'α={c.reg.alpha} Th={c.reg.threshold} reg={c.reg.dataset}[:{c.reg.num_images}], '
        f'{len(self.mesh.devices.flat)} device(s): {jax.devices()[0].platform}')
    t_run, measured_steps, measured_time = time.time(), 0, 0.0
    history = []
    for epoch in range(start_epoch, c.num_epochs):
      order = self.epoch_order(self.keys.shuffle, self.train_indices_dev, epoch)
      t_epoch, t_mark, mark_step, sums, n_sums = time.time(), None, 0, None, 0
      for i in range(spe):
        state, metrics = self.train_step(state, self.keys, order, self.data, i)
        sums = metrics if sums is None else _add_trees(sums, metrics)
        n_sums += 1
        if i == 0:
          jax.block_until_ready(metrics)
          t_mark, mark_step = time.time(), 1
        elif (i + 1) % c.log_every_steps == 0 or i + 1 == spe:
          m = _scalars(metrics)
          now = time.time()
          if i + 1 > mark_step:
            measured_time += now - t_mark
            measured_steps += i + 1 - mark_step
          t_mark, mark_step = now, i + 1
          rate = measured_steps / measured_time if measured_time > 0 else float('nan')
          done = epoch * spe + i + 1 - start_epoch * spe
          eta = (total_steps - start_epoch * spe - done) / rate if rate == rate and rate > 0 else 0
          sim = f' sim {m["sim_loss"]:.4f}' if 'sim_loss' in m else ''
          log(f'epoch {epoch + 1}/{c.num_epochs} step {i + 1}/{spe}: loss {m["loss"]:.4f} '
              f'ce {m["ce_loss"]:.4f}{sim} acc {m["accuracy"]:.3f} | '
              f'{rate * images_per_step:.0f} img/s | ETA {_fmt_time(eta)}')
      train_means = {f'train_{k}': v / n_sums for k, v in _scalars(sums).items()}
      variables = self.eval_variables(state)
      val = self.evaluate_val(variables)
      val_loss = np.asarray(val['loss'], np.float64)
      improved = val_loss < best['val_loss']
      if improved.any():
        best['variables'] = jax.tree.map(
            lambda new, old: jnp.where(jnp.asarray(improved).reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            variables, best['variables'])
        best['val_loss'] = np.where(improved, val_loss, best['val_loss'])
        best['epoch'] = np.where(improved, epoch, best['epoch'])
      record = {'epoch': epoch + 1, 'step': int((epoch + 1) * spe), **train_means,
                'val_loss': float(val_loss.mean()), 'val_accuracy': float(np.mean(val['accuracy'])),
                'learning_rate': float(learning_rate_schedule(c, spe)(epoch * spe)),
                'epoch_seconds': time.time() - t_epoch}
      if self.K > 1:
        record.update(val_loss_per_seed=val_loss.tolist(), val_accuracy_per_seed=np.asarray(val['accuracy']).tolist())
      history.append(record)
      if writer:
        writer.write(record)
      log(f'epoch {epoch + 1}/{c.num_epochs} done in {_fmt_time(record["epoch_seconds"])}: '
          f'val loss {record["val_loss"]:.4f} acc {record["val_accuracy"]:.4f}'
          + (' (best)' if improved.all() else ''))
      if manager is not None:
        manager.save(epoch, state, best['variables'],
                     {'epoch': epoch, 'best_val_loss': best['val_loss'].tolist(),
                      'best_epoch': best['epoch'].tolist(), 'num_seeds': self.K, 'seed': c.seed})
    if manager is not None:
      manager.wait()

    test = self.evaluate_test(best['variables'])
    result = {
        'test_accuracy': float(np.mean(test['accuracy'])),
        'test_loss': float(np.mean(test['loss'])),
        'best_epoch': [int(e) + 1 for e in best['epoch']],
        'best_val_loss': [float(v) for v in best['val_loss']],
        'num_seeds': self.K,
        'train_seconds': time.time() - t_run,
        'workdir': self.workdir,
    }
    if self.K > 1:
      result['test_accuracy_per_seed'] = np.asarray(test['accuracy']).tolist()
      result['test_loss_per_seed'] = np.asarray(test['loss']).tolist()
    if writer:
      writer.write({'final': True, **result})
    self.final_state, self.best_variables, self.history = state, best['variables'], history
    return result


# Fields that may differ when a run directory is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = ('num_epochs', 'log_every_steps', 'tensorboard', 'eval_batch_size', 'data_dir', 'download')


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a run directory that was trained with a different configuration."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json_best_effort())

  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
    return out

  defaults = flat(json.loads(config_lib.base_config().to_json_best_effort()))
  old, new = flat(old), flat(new)
  # A field the old run did not have yet counts as its default.
  diff = [k for k in sorted(set(old) | set(new))
          if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))]
  if diff:
    k = diff[0]
    raise config_lib.ConfigError(
        f'{workdir} holds a run with a different config ({k}: {old.get(k)!r} there, {new.get(k)!r} now'
        f'{f" and {len(diff) - 1} more" if len(diff) > 1 else ""}); use a new --workdir to start a new run')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config`` into ``workdir`` (resuming if it has checkpoints); returns the result."""
  config_lib.validate(config)
  check_workdir_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, workdir)
  main_process = jax.process_index() == 0
  if main_process:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  result = trainer.fit()
  if main_process:
    with open(os.path.join(workdir, 'result.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
