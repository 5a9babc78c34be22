"""Data parallelism through a device mesh (``jax.sharding``), single- and multi-host.

One mesh axis, 'data'. The train step is one ``jax.jit`` program: parameters, optimizer and
model state are replicated, each step's global batch is sharded along its batch axis, and XLA
inserts the cross-device reductions. BatchNorm statistics and the similarity running means are
therefore computed over the global batch, exactly as on one device. (This is what ``pmap``
does by hand; since JAX 0.4 ``pmap`` itself lowers to ``jit`` + ``shard_map``.)

The mesh is ``jax.make_mesh`` (device order chosen for the hardware's topology); several hosts
are joined by ``jax.distributed.initialize``, which finds the coordinator, process count and
rank itself (SLURM, Open MPI, Cloud TPU, …). CPU processes exchange data through gloo, JAX's
default CPU collectives; GPUs use NCCL.
"""
from __future__ import annotations

import os
import resource
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pixelreg_jax.errors import ConfigError

AXIS = 'data'
# Launchers whose environment variable gives the number of processes (JAX's cluster detection
# reads the rest); more than one means this is a multi-process job.
_LAUNCHER_PROCESS_COUNTS = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named 'data' over ``devices`` (default: every device of every host).

  Shape (len(devices),). Its axis is ``Auto``: shardings are given to ``jit`` explicitly, and
  XLA propagates them through the step.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of every array of a (per-seed) training batch: split on its leading axis."""
  return NamedSharding(mesh, P(AXIS))


def check_batch(batch_size: int, mesh: Mesh, pairs_per_step: int = 0) -> None:
  """Raises ConfigError unless the batch (and the pair batch) divide over the devices."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'config.batch_size={batch_size} does not divide over {n} devices; '
                      f'use a multiple of {n}')
  if pairs_per_step and pairs_per_step % n:
    raise ConfigError(f'config.reg.pairs_per_step={pairs_per_step} does not divide over {n} devices; '
                      f'use a multiple of {n}')


def usable_memory_bytes(device: jax.Device) -> Optional[int]:
  """The bytes arrays can take on ``device``, or None when unknown: an accelerator's memory
  limit; on a CPU the least of the machine's available memory, this process's address-space limit
  (``ulimit -v``) and its cgroup's memory limit."""
  if device.platform != 'cpu':
    return (device.memory_stats() or {}).get('bytes_limit')
  limits = []
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft != resource.RLIM_INFINITY:
    limits.append(soft)
  for path, scale in (('/proc/meminfo', 1024), ('/sys/fs/cgroup/memory.max', 1)):
    try:
      with open(path) as f:
        text = f.read()
    except OSError:
      continue
    if path.endswith('meminfo'):
      text = next((line.split()[1] for line in text.splitlines() if line.startswith('MemAvailable:')), '')
    if text.strip().isdigit():
      limits.append(int(text) * scale)
  return min(limits) if limits else None


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f'{name}={value!r} is not an integer') from None


def maybe_initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when this process is one of several; returns whether.

  A multi-process job is one with ``JAX_COORDINATOR_ADDRESS`` set, or one started by SLURM or
  Open MPI with more than one task. JAX then reads the coordinator address
  (``JAX_COORDINATOR_ADDRESS``, or the launcher's) and, from the launcher's environment, the
  process count and rank; without a launcher they come from ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, which JAX itself does not read. Under SLURM and Open MPI, JAX gives each
  process one GPU (its local rank): launch one task per GPU.

  JAX's preemption service is turned off: it catches SIGTERM and only tells programs that poll
  ``multihost_utils.reached_preemption_sync_point``, which this one does not, so a
  ``kill``/``scancel`` was ignored and the run went on (measured: a process slept through SIGTERM
  and exited 0). Without it SIGTERM ends the process as it ends a single-process run; re-running
  resumes from the last epoch's checkpoint.
  """
  explicit = bool(os.environ.get('JAX_COORDINATOR_ADDRESS'))
  launched = any((_env_int(v) or 1) > 1 for v in _LAUNCHER_PROCESS_COUNTS)
  if not (explicit or launched):
    return False
  num_processes, process_id = _env_int('JAX_NUM_PROCESSES'), _env_int('JAX_PROCESS_ID')
  if not launched and (num_processes is None or process_id is None):
    raise ConfigError('JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and JAX_PROCESS_ID too '
                      '(or start the processes with SLURM or Open MPI)')
  jax.config.update('jax_enable_preemption_service', False)
  jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
  return True
