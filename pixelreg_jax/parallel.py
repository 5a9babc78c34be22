"""Data parallelism through a device mesh (``jax.sharding``), single- and multi-host.

One mesh axis, 'data'. The train step is one ``jax.jit`` program: parameters, optimizer and
model state are replicated, each step's global batch is sharded along its batch axis, and XLA
inserts the cross-device reductions. BatchNorm statistics and the similarity running means are
therefore computed over the global batch, exactly as on one device. (This is what ``pmap``
does by hand; since JAX 0.4 ``pmap`` itself lowers to ``jit`` + ``shard_map``.)
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pixelreg_jax.config import ConfigError


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named 'data' over ``devices`` (default: every device of every host)."""
  devices = list(devices) if devices is not None else jax.devices()
  return Mesh(np.array(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of every array of a (per-seed) training batch: split on its leading axis."""
  return NamedSharding(mesh, P('data'))


def check_batch(batch_size: int, mesh: Mesh, pairs_per_step: int = 0) -> None:
  """Raises ConfigError unless the batch (and the pair batch) divide over the devices."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'config.batch_size={batch_size} does not divide over {n} devices; '
                      f'use a multiple of {n}')
  if pairs_per_step and pairs_per_step % n:
    raise ConfigError(f'config.reg.pairs_per_step={pairs_per_step} does not divide over {n} devices; '
                      f'use a multiple of {n}')


def maybe_initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when the launcher says this is a multi-host job.

  Recognised: an explicit coordinator (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES``
  and ``JAX_PROCESS_ID``), or SLURM with more than one task (``SLURM_NTASKS`` > 1), where JAX
  reads the rest from SLURM's environment. Returns whether it initialised. CPU processes
  exchange data through gloo (GPUs use NCCL).
  """
  if os.environ.get('JAX_COORDINATOR_ADDRESS') or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
    return True
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()
    return True
  return False
