"""The member axis: a run trains M models at once, and every array of its state is [M, ...].

A run's members are its (α, Th) settings × ``num_seeds`` seeds (``config.population``; by
default the one setting ``reg.alpha``/``reg.threshold``): member m is setting m // K with seed
``seed + m % K``. A model with seed s gets the same keys, data split and data order whatever
population it trains in, so a member trains exactly as it would alone.

``seeded`` lifts a single-model function to the member axis, in one of two ways chosen by
``config.seed_parallelism`` (docs/performance.md compares them):
  vmap  the members batched (convolutions become grouped convolutions): fills an accelerator;
  loop  the members one after another inside one program, unrolled (compile time grows with M):
        on CPUs, where XLA runs grouped convolutions slowly and gradient convolutions inside a
        ``lax.map``/``scan`` body slower still (jax-ml/jax#12868).
"""
from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pixelreg_jax import config as config_lib

Array = jax.Array


@flax.struct.dataclass
class Member:
  """Per-member hyper-parameters, each [M] (stacked), and the members' seeds."""
  alpha: Array
  threshold: Array
  seed: Array


@flax.struct.dataclass
class SeedKeys:
  """Per-member PRNG keys, each [M, 2] (stacked over members)."""
  init: Array
  shuffle: Array
  augment: Array
  pairs: Array
  split: Array


def members(config: ml_collections.ConfigDict) -> Member:
  """The population of a run: every (α, Th) setting × seeds seed … seed + num_seeds − 1."""
  rows = [(a, th, config.seed + k) for a, th in config_lib.settings(config) for k in range(config.num_seeds)]
  return Member(np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32),
                np.array([r[2] for r in rows], np.int64))


def member_name(config: ml_collections.ConfigDict, m: Member, i: int) -> str:
  """'seed 3', or 'a4_th0.8 seed 3' in a run of several settings."""
  name = f'seed {int(m.seed[i])}'
  if len(config_lib.settings(config)) > 1:
    name = f'{config_lib.setting_name(float(m.alpha[i]), float(m.threshold[i]))} {name}'
  return name


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


def seeded(fn: Callable, num_members: int, in_axes, mode: str = 'vmap') -> Callable:
  """Applies a single-model function over the leading member axis.

  Args:
    fn: a function of one model.
    num_members: M.
    in_axes: per argument, 0 if it carries the member axis, None if it is shared.
    mode: 'vmap' (batched) or 'loop' (unrolled, one member after another).

  Returns:
    The function of M models: its outputs carry the member axis [M, ...]. For M = 1 the axis
    is squeezed inside (the plain single-model program).
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
