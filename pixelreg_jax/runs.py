"""A trained run directory: its config, model and best variables, ready for evaluation."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models, train


@dataclasses.dataclass
class Run:
  """What ``load_run`` returns.

  Attributes:
    workdir: the run directory.
    config: its configuration (from ``config.json``).
    model: the ResNet.
    variables: best-by-validation variables, every leaf with a leading seed axis [K, ...].
    meta: checkpoint metadata (epoch, best_epoch, best_val_loss, …).
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: models.ResNet
  variables: dict
  meta: dict

  @property
  def num_seeds(self) -> int:
    return self.config.num_seeds

  @property
  def seeds(self) -> list[int]:
    return [self.config.seed + k for k in range(self.config.num_seeds)]

  @property
  def family(self) -> str:
    return data_lib.get_info(self.config.dataset).family

  def model_input(self, images):
    """uint8 native images -> [0, 1] images at the network's size (attacks work here)."""
    return pipe.model_input(images, self.config.image_size, self.config.model.channels)

  def logits_fn(self, variables: dict):
    """[0, 1] images -> logits of the model with ``variables`` (one seed), inference mode."""
    def fn(x):
      return self.model.apply(variables, pipe.normalize(x, self.family), train=False)[0]
    return fn

  def seed_variables(self, k: int) -> dict:
    return jax.tree.map(lambda v: v[k], self.variables)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ckpt_lib.CheckpointError(f'{workdir} is not a run directory (no config.json); '
                                   'train one with python -m pixelreg_jax.main --workdir=...')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, log=print) -> Run:
  """Restores the best variables of every seed of a run directory (read-only)."""
  config = load_config(workdir)
  model = train.create_model(config)
  tx = train.create_optimizer(config, 1)
  keys = train.seed_keys(config)
  template = jax.eval_shape(jax.vmap(lambda k: train.Trainer.eval_variables(
      train.create_train_state(k, config, model, tx))), keys.init)
  template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
  manager = ckpt_lib.CheckpointManager(workdir, read_only=True)
  variables, meta = manager.restore_best(template, log=log)
  return Run(workdir, config, model, variables, meta)
