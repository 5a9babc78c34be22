"""One model's training: its state, optimizer, the step on L = CE + α·L_sim, and evaluation.

Everything here is a function of one model; ``population.seeded`` lifts it to the M members of
a run, and ``trainer`` compiles and loops it.

One step (``train_step``): the classification batch and, when regularizing, the 16 row and 16
column images of the pairs go through the network in the release's three passes, or in one
fused pass (``models.BatchNorm`` groups; ``config.fused_pass``); L = CE + α·L_sim
(``similarity.similarity_loss``), one SGD step (optax).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models, regularizers, similarity

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
  chex.assert_rank(batch['image'], 4)
  chex.assert_shape(batch['label'], (batch['image'].shape[0],))
  if 'reg_a' in batch:
    chex.assert_equal_shape([batch['reg_a'], batch['reg_b']])
    chex.assert_shape(batch['target'], (batch['reg_a'].shape[0],))
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


def pipeline_spec(config: ml_collections.ConfigDict) -> pipe.PipelineSpec:
  return pipe.PipelineSpec(image_size=config_lib.input_size(config), channels=config.model.channels,
                           family=data_lib.get_info(config.dataset).family, augment=config.augment,
                           batch_size=config.batch_size, pairs_per_step=config.reg.pairs_per_step,
                           reg_keep_size=config.reg.keep_size, reg_family=regularizers.family(config))
