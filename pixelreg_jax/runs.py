"""A trained run directory: its config, model and best variables, ready for evaluation."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from pixelreg_jax import checkpoint as ckpt_lib
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import models, train
from pixelreg_jax.errors import CheckpointError


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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise CheckpointError(f'{workdir} is not a run directory (no config.json); '
                                   'train one with python -m pixelreg_jax.main --workdir=...')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is unreadable ({type(e).__name__}: {e})') from e
  return ml_collections.ConfigDict(saved)


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
  keys = train.seed_keys(train.members(config).seed)
  template = jax.eval_shape(jax.vmap(lambda k: train.create_train_state(k, config, model, tx).variables()), keys.init)
  template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
  manager = ckpt_lib.CheckpointManager(workdir, read_only=True)
  variables, meta = manager.restore_best(template, log=log)
  restored = manager.last_restore
  return Run(workdir, config, model, variables, meta, checkpoint_epoch=restored.epoch,
             fallback_reason=restored.fallback_reason)
