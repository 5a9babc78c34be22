"""Training: state, the jitted step (CE + α·L_sim), evaluation, and the epoch loop.

Members: a run trains M models at once, a *population*: its (α, Th) settings × ``num_seeds``
seeds (``config.population``; one setting, ``reg.alpha``/``reg.threshold``, by default). Every
array of the train state carries a leading member axis [M, ...]; for M = 1 the step is the plain
single-model step (the axis is squeezed inside jit), for M > 1 it is vmapped (accelerators) or
looped (CPUs) over the members (``seeded``). Member m = setting m // K, seed ``seed + m % K``.

One step (``train_step``): the classification batch and, when regularizing, the 16 row and 16
column images of the pairs go through the network in one fused pass (``models.BatchNorm``
groups; ``config.fused_pass``) or the release's three passes; L = CE + α·L_sim.
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
from absl import logging
from flax.training import train_state

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models, parallel, regularizers, similarity
from pixelreg_jax.errors import ConfigError, TrainingError

Array = jax.Array


class TrainState(train_state.TrainState):
  """Flax TrainState plus the model's non-parameter state."""
  batch_stats: Any = None
  sim_stats: Any = None

  def variables(self) -> dict:
    """The model's variables (params, batch_stats, sim_stats): what evaluation and the best
    checkpoint hold."""
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
  variables = model.init(rng, jnp.zeros((1, size, size, config.model.channels), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], sim_stats=variables['sim_stats'])


# ---------------------------------------------------------------------------------------
# Steps (single model; see ``seeded`` for the member axis).
# ---------------------------------------------------------------------------------------


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy: [B, C] logits, [B] int labels -> scalar."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def _select(flag, new, old):
  """``new`` where ``flag`` (a bool, maybe traced), else ``old``, leaf by leaf."""
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def forward(state: TrainState, params, batch: dict, active, fused: bool):
  """The training-mode forward pass of one step.

  Args:
    state: the model's state (batch_stats are read from it).
    params: the parameters to differentiate.
    batch: {'image': [B,...], 'label'} and, when regularizing, {'reg_a', 'reg_b': [P,...]}.
    active: whether the pair images update BatchNorm's running statistics (False for an α = 0
      member of a population, so it trains exactly as alone); a bool or a traced bool.
    fused: one pass over the B + 2P images (when all have one size), else three passes.

  Returns:
    (logits [B, classes], taps of the row images or None, taps of the column images or None,
     updated batch_stats).
  """
  variables = {**state.variables(), 'params': params}
  apply = state.apply_fn
  if 'reg_a' not in batch:
    (logits, _), upd = apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    return logits, None, None, upd['batch_stats']
  b, p = batch['image'].shape[0], batch['reg_a'].shape[0]
  if fused and batch['image'].shape[1:] == batch['reg_a'].shape[1:]:
    x = jnp.concatenate([batch['image'], batch['reg_a'], batch['reg_b']])
    (logits, taps), upd = apply(variables, x, train=True, groups=(b, p, p), group_mask=(True, active, active),
                                mutable=['batch_stats'])
    return (logits[:b], [t[b:b + p] for t in taps], [t[b + p:] for t in taps], upd['batch_stats'])
  (logits, _), upd = apply(variables, batch['image'], train=True, mutable=['batch_stats'])
  after_cls = upd['batch_stats']
  taps_a, upd = apply({**variables, 'batch_stats': after_cls}, batch['reg_a'], True, method='features',
                      mutable=['batch_stats'])
  taps_b, upd = apply({**variables, 'batch_stats': upd['batch_stats']}, batch['reg_b'], True,
                      method='features', mutable=['batch_stats'])
  return logits, taps_a, taps_b, _select(active, upd['batch_stats'], after_cls)


def train_step(state: TrainState, batch: dict, *, alpha, eps: float = 1e-5,
               fused: bool = True) -> tuple[TrainState, dict]:
  """One SGD step on L = CE + α·L_sim.

  Args:
    state: one model's TrainState.
    batch: {'image': [B,S,S,C], 'label': [B]}, and when regularizing {'reg_a', 'reg_b':
      [P,S,S,C], 'target': [P]} (``regularizers.pair_batch``).
    alpha: regularization strength: a number, or a traced scalar (a population member).
      Without pairs in the batch, or with the number 0, no similarity pass is traced (exact CE).
    eps: ε of the similarity loss.
    fused: one network pass over all images of the step (``forward``).

  Returns:
    (new state, metrics {'loss', 'ce_loss', 'accuracy'} and when regularizing {'sim_loss',
    'model_sim_mean'}, as scalars).
  """
  static_zero = isinstance(alpha, (int, float)) and alpha == 0
  regularize = 'reg_a' in batch and not static_zero
  active = jnp.asarray(alpha) > 0 if regularize else False

  def loss_fn(params):
    logits, taps_a, taps_b, batch_stats = forward(state, params, batch, active, fused)
    ce = cross_entropy_loss(logits, batch['label'])
    metrics = {'ce_loss': ce, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
    sim_stats, loss = state.sim_stats, ce
    if regularize:
      (s_model, _), upd = state.apply_fn({'params': params, 'sim_stats': state.sim_stats}, taps_a, taps_b, True,
                                         active, method='tap_similarity', mutable=['sim_stats'])
      sim_stats = upd['sim_stats']
      sim = similarity.similarity_loss(s_model, batch['target'], eps)
      loss = ce + alpha * sim
      metrics.update(sim_loss=sim, model_sim_mean=jnp.mean(s_model))
    metrics['loss'] = loss
    return loss, (batch_stats, sim_stats, metrics)

  grads, (batch_stats, sim_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats, sim_stats=sim_stats), metrics


def eval_step(variables: dict, apply_fn: Callable, images: Array, labels: Array, mask: Array) -> dict:
  """Sums over one batch in inference mode: {'loss_sum', 'correct', 'count'}."""
  logits, _ = apply_fn(variables, images, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss_sum': jnp.sum(ce * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          'count': jnp.sum(mask)}


def seeded(fn: Callable, num_members: int, in_axes, mode: str = 'vmap') -> Callable:
  """Applies a single-model function over the leading member axis.

  ``in_axes`` marks which arguments carry the member axis (0) and which are shared (None).
  ``mode='vmap'`` batches the members (convolutions become grouped convolutions: fills a GPU);
  ``mode='loop'`` runs them one after another inside the same program (unrolled: compile time
  grows with M; on CPUs this is ~2.7× faster than vmap, whose grouped convolutions XLA:CPU runs
  slowly, and faster than a ``lax.map`` loop, whose body's gradient convolutions XLA:CPU runs
  20-35× slower, jax-ml/jax#12868). For one member the axis is squeezed.
  """
  if num_members == 1:
    def single(*args):
      args = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
      return jax.tree.map(lambda x: x[None], fn(*args))
    return single
  if mode == 'vmap':
    return jax.vmap(fn, in_axes=in_axes)

  def looped(*args):
    outs = [fn(*[a if ax is None else jax.tree.map(lambda x, k=k: x[k], a) for a, ax in zip(args, in_axes)])
            for k in range(num_members)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return looped


def seed_mode(config: ml_collections.ConfigDict) -> str:
  """'vmap' or 'loop' for ``config.seed_parallelism`` ('auto': loop on CPU, vmap elsewhere)."""
  if config.seed_parallelism == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return config.seed_parallelism


# ---------------------------------------------------------------------------------------
# Members and data preparation.
# ---------------------------------------------------------------------------------------


@flax.struct.dataclass
class SeedKeys:
  """Per-member PRNG keys, each [M, 2] (stacked over members)."""
  init: Array
  shuffle: Array
  augment: Array
  pairs: Array
  split: Array


@flax.struct.dataclass
class Member:
  """Per-member hyper-parameters, each [M] (stacked), and the members' seeds."""
  alpha: Array
  threshold: Array
  seed: Array


def members(config: ml_collections.ConfigDict) -> Member:
  """The population of a run: every (α, Th) setting × seeds seed … seed + num_seeds − 1."""
  rows = [(a, th, config.seed + k) for a, th in config_lib.settings(config) for k in range(config.num_seeds)]
  return Member(np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32),
                np.array([r[2] for r in rows], np.int64))


def seed_keys(seeds) -> SeedKeys:
  """Keys of the given seeds: a model with seed s is the same whatever population it trains in."""
  def one(s):
    k = jax.random.PRNGKey(int(s))
    return SeedKeys(*(jax.random.fold_in(k, i) for i in range(5)))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[one(s) for s in seeds])


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
  (images, labels), mask = pipe.pad_to_batches(batch_size, images, labels)
  return EvalSet(images, labels, mask)


def evaluate_dataset(variables: dict, apply_fn: Callable, ds: EvalSet, spec: pipe.PipelineSpec) -> dict:
  """Mean loss and accuracy of one model on a padded dataset (jit-able; lax.map over batches)."""
  def body(args):
    images, labels, mask = args
    return eval_step(variables, apply_fn, pipe.network_input(images, spec), labels, mask)
  sums = jax.tree.map(jnp.sum, jax.lax.map(body, (ds.images, ds.labels, ds.mask)))
  return {'loss': sums['loss_sum'] / sums['count'], 'accuracy': sums['correct'] / sums['count']}


def load_data(config: ml_collections.ConfigDict) -> dict:
  """Host arrays of the run: train/test split and, when regularizing, the regularizer's data
  (``regularizers.load``). Fails fast with one line when data is missing."""
  kw = {'download': config.download, 'manual_dir': config.tfds_manual_dir}
  train_x, train_y = data_lib.load_split(config.dataset, 'train', config.data_dir, **kw)
  test_x, test_y = data_lib.load_split(config.dataset, 'test', config.data_dir, **kw)
  reg = regularizers.load(config, train_x, train_y) if config_lib.regularized(config) else None
  return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y, 'reg': reg}


def pipeline_spec(config: ml_collections.ConfigDict) -> pipe.PipelineSpec:
  return pipe.PipelineSpec(image_size=config_lib.input_size(config), channels=config.model.channels,
                           family=data_lib.get_info(config.dataset).family, augment=config.augment,
                           batch_size=config.batch_size, pairs_per_step=config.reg.pairs_per_step,
                           reg_keep_size=config.reg.keep_size)


# ---------------------------------------------------------------------------------------
# The loop's parts.
# ---------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Throughput:
  """Steps per second measured between log points (compilation excluded) and the ETA."""

  def __init__(self, total_steps: int):
    self.remaining = total_steps
    self.steps, self.seconds = 0, 0.0
    self._mark: Optional[float] = None

  def start(self) -> None:
    """Called when a step's result is ready; the clock runs from here."""
    self._mark = time.time()

  def advance(self, steps: int) -> None:
    """``steps`` more steps are finished (their results are ready)."""
    now = time.time()
    if self._mark is not None:
      self.steps += steps
      self.seconds += now - self._mark
    self._mark = now
    self.remaining -= steps

  def skip(self, steps: int) -> None:
    """``steps`` finished steps whose time is not measured (the compiling first one)."""
    self.remaining -= steps

  @property
  def rate(self) -> float:
    return self.steps / self.seconds if self.seconds > 0 else float('nan')

  def eta(self) -> float:
    return self.remaining / self.rate if self.rate > 0 else float('nan')


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
    return {'best_val_loss': [_json_number(v) for v in self.val_loss], 'best_epoch': self.epoch.tolist()}

  def restore(self, variables: dict, meta: dict) -> None:
    self.variables = variables
    self.val_loss = np.array([np.inf if v is None else v for v in meta['best_val_loss']], np.float64)
    self.epoch = np.asarray(meta['best_epoch'])


def _json_number(v) -> Optional[float]:
  """A float for strict JSON: None for NaN/±inf."""
  v = float(v)
  return v if math.isfinite(v) else None


def _json_clean(value):
  if isinstance(value, dict):
    return {k: _json_clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_clean(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return _json_number(value)
  return value


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
      f.write(json.dumps(_json_clean(record), allow_nan=False) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != 'step' and math.isfinite(v):
          self._tb.scalar(k, v, record.get('step', 0))
      self._tb.flush()


# The console line: metric name -> label, in this order; metrics not listed follow by name.
CONSOLE = (('loss', 'loss'), ('ce_loss', 'ce'), ('sim_loss', 'sim'), ('accuracy', 'acc'))


def console_line(metrics: dict[str, float]) -> str:
  """'loss 0.5123 ce 0.4011 sim 0.0278 acc 0.812 …' from every scalar of the step metrics."""
  order = [k for k, _ in CONSOLE if k in metrics] + sorted(k for k in metrics if k not in dict(CONSOLE))
  labels = dict(CONSOLE)
  return ' '.join(f'{labels.get(k, k)} {metrics[k]:.4f}' for k in order)


_add_trees = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))   # one dispatch per step


def _scalars(tree) -> dict:
  return {k: float(np.mean(v)) for k, v in jax.device_get(tree).items()}


def _log(log: Optional[Callable[[str], None]]) -> Callable[[str], None]:
  return log if log is not None else logging.info


# ---------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------


class Trainer:
  """Builds everything a run needs. Public: ``init_state``, ``epoch_order``, ``step``,
  ``evaluate``, ``fit``. Used by main, tests and the benchmarks."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None,
               host_data: Optional[dict] = None, mesh: Optional[jax.sharding.Mesh] = None):
    config_lib.validate(config)
    self.config = config
    self.workdir = workdir
    self.members = members(config)
    self.M = len(self.members.seed)
    self.host = host_data if host_data is not None else load_data(config)
    self.keys = seed_keys(self.members.seed)
    self.num_train_total = len(self.host['train_x'])
    splits = [split_indices(k, self.num_train_total, config.val_fraction, config.train_subset)
              for k in self.keys.split]
    self.train_indices = np.stack([s[0] for s in splits])   # [M, N_train]
    self.val_indices = [s[1] for s in splits]
    self.regularizer = regularizers.optional(config, self.members.alpha)
    reg_host = self.host.get('reg')
    if self.regularizer and reg_host is None:   # host data given without the regularizer's part
      reg_host = self.host['reg'] = regularizers.load(config, self.host['train_x'], self.host['train_y'])
    config_lib.validate_against_data(config, self.train_indices.shape[1],
                                     len(reg_host['images']) if reg_host is not None else 0)
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    parallel.check_batch(config.batch_size, self.mesh, config.reg.pairs_per_step if self.regularizer else 0)
    self.spec = pipeline_spec(config)
    self.steps_per_epoch = self.train_indices.shape[1] // config.batch_size
    self.model = create_model(config)
    self.tx = create_optimizer(config, self.steps_per_epoch)
    self._build()

  # -- construction ------------------------------------------------------------------

  def _build(self):
    c, rep = self.config, parallel.replicated(self.mesh)
    reg = regularizers.prepare(c, self.host['reg']) if self.regularizer else None
    self.data = jax.device_put(pipe.TrainData(self.host['train_x'], self.host['train_y'], reg), rep)
    self.train_indices_dev = jax.device_put(self.train_indices, rep)
    # Validation sets of all members, stacked [M, ...] (same size: the split fraction is fixed).
    self.val_sets = None if not len(self.val_indices[0]) else jax.device_put(jax.tree.map(
        lambda *xs: np.stack(xs), *[make_eval_set(self.host['train_x'][v], self.host['train_y'][v],
                                                  c.eval_batch_size) for v in self.val_indices]), rep)
    self.test_set = jax.device_put(make_eval_set(self.host['test_x'], self.host['test_y'], c.eval_batch_size), rep)

    init = jax.jit(jax.vmap(lambda k: create_train_state(k, c, self.model, self.tx)), out_shardings=rep)
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
      return train_step(state, batch, alpha=alpha, eps=eps, fused=fused)

    mode = seed_mode(c)
    self._hparams = Member(jnp.asarray(self.members.alpha), jnp.asarray(self.members.threshold),
                           jnp.asarray(self.members.seed, jnp.int32))
    step = jax.jit(seeded(one_step, self.M, (0, 0, 0, 0, None, None), mode), donate_argnums=(0,))
    self._step = lambda state, order, i: step(state, self.keys, self._hparams, order, self.data, i)
    self._step_jit = step
    epoch_order = jax.jit(jax.vmap(pipe.epoch_order, in_axes=(0, 0, None)))
    self._epoch_order = lambda epoch: epoch_order(self.keys.shuffle, self.train_indices_dev, epoch)
    self._epoch_order_jit = epoch_order

    def one_eval(variables, ds):
      return evaluate_dataset(variables, self.model.apply, ds, spec)

    self._eval_shared = jax.jit(seeded(one_eval, self.M, (0, None), mode))      # one dataset, all members
    self._eval_per_member = jax.jit(seeded(one_eval, self.M, (0, 0), mode))     # a dataset per member

  # -- the public step API -----------------------------------------------------------

  def init_state(self) -> TrainState:
    """The initial state of every member, stacked [M, ...]."""
    return self._init()

  def epoch_order(self, epoch: int) -> Array:
    """[M, N_train] the order in which each member visits its training images in ``epoch``."""
    return self._epoch_order(epoch)

  def step(self, state: TrainState, order: Array, step_in_epoch: int) -> tuple[TrainState, dict]:
    """One training step of every member (``state`` is donated): (new state, metrics [M])."""
    return self._step(state, order, step_in_epoch)

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

  # -- the loop ----------------------------------------------------------------------

  def _check_finite(self, what: str, values: np.ndarray, epoch: int, manager) -> None:
    bad = ~np.isfinite(np.asarray(values, np.float64))
    if not bad.any():
      return
    names = [self.member_name(m) for m in np.flatnonzero(bad)]
    kept = (f'the last good checkpoint (epoch {epoch}) is kept in {manager.directory}' if manager and epoch
            else 'no checkpoint was written')
    raise TrainingError(f'training diverged: {what} is not finite in epoch {epoch + 1} for {", ".join(names)}; '
                        f'{kept}; lower config.optim.learning_rate or config.reg.alpha')

  def member_name(self, m: int) -> str:
    name = f'seed {int(self.members.seed[m])}'
    if len(config_lib.settings(self.config)) > 1:
      name = f'{config_lib.setting_name(float(self.members.alpha[m]), float(self.members.threshold[m]))} {name}'
    return name

  def fit(self, log: Optional[Callable[[str], None]] = None) -> dict:
    """Trains all epochs (resuming from ``workdir`` when it has checkpoints) and tests the best.

    Progress goes to ``log`` (default: absl logging). A non-finite training or validation loss
    stops the run with ``TrainingError`` before anything of that epoch is saved. In a
    multi-process run every process trains; only process 0 logs and writes files (checkpoints
    are written by all processes together, as orbax requires).
    """
    c = self.config
    log = _log(log)
    main_process = jax.process_index() == 0
    if not main_process:
      log = lambda s: None  # noqa: E731
    manager = ckpt_lib.CheckpointManager(self.workdir, keep=c.checkpoint.keep) if self.workdir else None
    state = self.init_state()
    best = BestSoFar(state.variables(), self.M)
    start_epoch = 0
    if manager is not None:
      restored = manager.restore_latest(state, best.variables, log=log)
      if restored is not None:
        state, best_vars, meta = restored
        best.restore(best_vars, meta)
        start_epoch = meta['epoch'] + 1
        why = manager.last_restore.fallback_reason
        log(f'resumed from {manager.directory} after epoch {start_epoch}'
            + (f' (an older checkpoint: {why})' if why else ''))
    writer = (MetricsWriter(self.workdir, c.tensorboard, resume_after_epoch=start_epoch)
              if self.workdir and main_process else None)

    spe = self.steps_per_epoch
    clock = Throughput(spe * (c.num_epochs - start_epoch))
    images_per_step = self.M * (c.batch_size + (2 * c.reg.pairs_per_step if self.regularizer else 0))
    settings = ', '.join(f'α={a:g} Th={t:g}' for a, t in config_lib.settings(c))
    log(f'training {c.model.name} (width {c.model.width}) on {c.dataset}: {self.train_indices.shape[1]} images, '
        f'{spe} steps/epoch × {c.num_epochs} epochs, {settings} × seeds {c.seed}..{c.seed + c.num_seeds - 1} '
        f'({self.M} model(s)), reg={c.reg.name}:{c.reg.dataset}[:{c.reg.num_images}], '
        f'{"fused" if c.fused_pass else "three-pass"} step, {len(self.mesh.devices.flat)} device(s): '
        f'{jax.devices()[0].platform}')
    if self.val_sets is None:
      log('no validation images (config.val_fraction=0): the last epoch is the result')
    t_run, history = time.time(), []
    for epoch in range(start_epoch, c.num_epochs):
      order = self.epoch_order(epoch)
      t_epoch, sums, logged = time.time(), None, 0
      for i in range(spe):
        state, metrics = self.step(state, order, i)
        sums = metrics if sums is None else _add_trees(sums, metrics)
        if i == 0:
          jax.block_until_ready(metrics)
          clock.skip(1)
          clock.start()
          logged = 1
        elif (i + 1) % c.log_every_steps == 0 or i + 1 == spe:
          m = _scalars(metrics)
          clock.advance(i + 1 - logged)
          logged = i + 1
          log(f'epoch {epoch + 1}/{c.num_epochs} step {i + 1}/{spe}: {console_line(m)} | '
              f'{clock.rate * images_per_step:.0f} img/s | ETA {_fmt_time(clock.eta())}')
      epoch_sums = jax.device_get(sums)
      train_loss = np.asarray(epoch_sums['loss']) / spe                      # [M]
      self._check_finite('the training loss', train_loss, epoch, manager)
      train_means = {f'train_{k}': float(np.mean(v)) / spe for k, v in epoch_sums.items()}
      variables = state.variables()
      val = self.evaluate(variables, 'val')
      val_loss = None if val is None else np.asarray(val['loss'], np.float64)
      if val_loss is not None:
        self._check_finite('the validation loss', val_loss, epoch, manager)
      improved = best.update(variables, val_loss, epoch)
      record = {'epoch': epoch + 1, 'step': int((epoch + 1) * spe), **train_means,
                'learning_rate': float(learning_rate_schedule(c, spe)(epoch * spe)),
                'epoch_seconds': time.time() - t_epoch}
      if val is not None:
        record.update(val_loss=float(val_loss.mean()), val_accuracy=float(np.mean(val['accuracy'])))
        if self.M > 1:
          record.update(val_loss_per_member=val_loss.tolist(),
                        val_accuracy_per_member=np.asarray(val['accuracy']).tolist())
      history.append(record)
      if writer:
        writer.write(record)
      val_text = (f'val loss {record["val_loss"]:.4f} acc {record["val_accuracy"]:.4f}'
                  if val is not None else f'train loss {record["train_loss"]:.4f}')
      log(f'epoch {epoch + 1}/{c.num_epochs} done in {_fmt_time(record["epoch_seconds"])}: {val_text}'
          + (' (best)' if improved.all() and val is not None else ''))
      if manager is not None:
        manager.save(epoch, state, best.variables, {'epoch': epoch, **best.meta(), 'num_seeds': c.num_seeds,
                                                    'num_members': self.M, 'seed': c.seed})
    if manager is not None:
      manager.wait()

    test = self.evaluate(best.variables, 'test')
    result = {
        'test_accuracy': float(np.mean(test['accuracy'])),
        'test_loss': float(np.mean(test['loss'])),
        'best_epoch': [int(e) + 1 for e in best.epoch],
        'best_val_loss': [_json_number(v) for v in best.val_loss],
        'selection': 'best validation loss' if self.val_sets is not None else 'last epoch (no validation images)',
        'num_seeds': c.num_seeds,
        'num_members': self.M,
        'train_seconds': time.time() - t_run,
        'workdir': self.workdir,
    }
    if self.M > 1:
      result['test_accuracy_per_member'] = np.asarray(test['accuracy']).tolist()
      result['test_loss_per_member'] = np.asarray(test['loss']).tolist()
    if len(config_lib.settings(c)) > 1:
      result['members'] = [self.member_name(m) for m in range(self.M)]
    if writer:
      writer.write({'final': True, **result})
    self.final_state, self.best_variables, self.history = state, best.variables, history
    self.best, self.test = best, test
    return result


# ---------------------------------------------------------------------------------------
# Run directories.
# ---------------------------------------------------------------------------------------


# Fields that may differ when a run directory is resumed (they do not change the trajectory).
# Fields a resumed run may change: bookkeeping, and how (not what) the step computes (the fused and
# the three-pass step, vmapped and looped members give equal results; tests/test_fused.py,
# tests/test_parallel.py), so a run started before a default changed still resumes.
RESUMABLE_CHANGES = ('num_epochs', 'log_every_steps', 'tensorboard', 'eval_batch_size', 'data_dir', 'download',
                     'fused_pass', 'seed_parallelism')


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a run directory that was trained with a different configuration."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f'{path} is unreadable ({e}); use a new --workdir') from e
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
    raise ConfigError(
        f'{workdir} holds a run with a different config ({k}: {old.get(k)!r} there, {new.get(k)!r} now'
        f'{f" and {len(diff) - 1} more" if len(diff) > 1 else ""}); use a new --workdir to start a new run')


def _write_json(path: str, value: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_json_clean(value), f, indent=2, allow_nan=False)
  os.replace(tmp, path)


def setting_config(config: ml_collections.ConfigDict, alpha: float, threshold: float) -> ml_collections.ConfigDict:
  """The config of one population setting: a plain multi-seed run with that (α, Th)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.population = ''
  c.reg.alpha, c.reg.threshold = float(alpha), float(threshold)
  return c


def export_settings(trainer: Trainer, workdir: str, write_files: bool = True) -> list[str]:
  """Writes each setting of a finished population run as its own run directory.

  ``<workdir>/<a…_th…>/`` gets config.json (that setting as a plain ``num_seeds`` run),
  checkpoints (its members' final state and best variables) and result.json: exactly what
  training that setting alone would have written, so ``evaluate``, ``report`` and ``analysis``
  take it as it is. Every process calls this (orbax saves together); ``write_files`` on one.
  """
  c, k = trainer.config, trainer.config.num_seeds
  out = []
  for s, (alpha, threshold) in enumerate(config_lib.settings(c)):
    sel = slice(s * k, (s + 1) * k)
    wd = os.path.join(workdir, config_lib.setting_name(alpha, threshold))
    take = lambda tree: jax.tree.map(lambda x: x[sel], tree)  # noqa: E731
    best_val = trainer.best.val_loss[sel]
    meta = {'epoch': c.num_epochs - 1, 'best_val_loss': [_json_number(v) for v in best_val],
            'best_epoch': trainer.best.epoch[sel].tolist(), 'num_seeds': k, 'num_members': k, 'seed': c.seed,
            'exported_from': os.path.abspath(workdir)}
    if write_files:
      os.makedirs(wd, exist_ok=True)
      setting = setting_config(c, alpha, threshold)
      _write_json(os.path.join(wd, 'config.json'), json.loads(setting.to_json_best_effort()))
    manager = ckpt_lib.CheckpointManager(wd, keep=1)
    manager.save(c.num_epochs - 1, take(trainer.final_state), take(trainer.best_variables), meta)
    manager.wait()
    acc, loss = np.asarray(trainer.test['accuracy'])[sel], np.asarray(trainer.test['loss'])[sel]
    if write_files:
      _write_json(os.path.join(wd, 'result.json'), {
          'test_accuracy': float(acc.mean()), 'test_loss': float(loss.mean()),
          'best_epoch': [int(e) + 1 for e in trainer.best.epoch[sel]], 'best_val_loss': meta['best_val_loss'],
          'num_seeds': k, 'test_accuracy_per_member': acc.tolist(), 'test_loss_per_member': loss.tolist(),
          'workdir': wd, 'population': os.path.abspath(workdir)})
    out.append(wd)
  return out


def _has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config`` into ``workdir`` (resuming if it has checkpoints); returns the result.

  The workdir is locked for the run (a second run on it stops with one line); a workdir with
  checkpoints must have been started with the same config (``check_workdir_config``);
  config.json is written before any data is loaded.
  """
  from pixelreg_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  config_lib.validate(config)
  main_process = jax.process_index() == 0
  workdir_lib.ensure_directory(workdir)
  with workdir_lib.lock(workdir, enabled=main_process):
    if _has_checkpoints(workdir):
      check_workdir_config(config, workdir)
    if main_process:
      _write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
    trainer = Trainer(config, workdir)
    result = trainer.fit()
    if len(config_lib.settings(config)) > 1:
      result['settings'] = export_settings(trainer, workdir, write_files=main_process)
    if main_process:
      _write_json(os.path.join(workdir, 'result.json'), result)
  return result
