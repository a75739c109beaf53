"""How a run is laid out over processes and devices: data parallel, the batch axis split over every device.

One process per host (`jax.distributed`); each process feeds its own rows of every global batch to its devices.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

CLUSTER_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES', 'JAX_COORDINATOR_ADDRESS')
# What JAX's SLURM detection reads: present together only inside an srun step. Every process started in a job
# inherits SLURM_JOB_ID and SLURM_NTASKS, so those alone do not make a process one of several.
SLURM_STEP = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Starts jax.distributed: with explicit flags, or in a cluster environment that JAX detects.

  On CPU the cross-process collectives run over gloo. When a process dies, the others stop (abort) once the
  coordination service misses its heartbeats for SCORE_SDE_HEARTBEAT_TIMEOUT seconds (default 60), instead of
  hanging in a collective; SCORE_SDE_SHUTDOWN_TIMEOUT (default 60) bounds the wait for peers at exit.
  """
  heartbeat_timeout_seconds = int(os.environ.get('SCORE_SDE_HEARTBEAT_TIMEOUT', 60))
  shutdown_timeout_seconds = int(os.environ.get('SCORE_SDE_SHUTDOWN_TIMEOUT', 60))
  explicit = coordinator_address is not None
  several = [name for name in CLUSTER_ENV[:3] if os.environ.get(name) not in (None, '', '0', '1')]
  if several == ['SLURM_NTASKS'] and not all(name in os.environ for name in SLURM_STEP):
    several = []  # inside an allocation but not started by srun (salloc, the batch script itself): one process
  detected = bool(several) or bool(os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if not (explicit or detected):
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                             shutdown_timeout_seconds=shutdown_timeout_seconds)
  return True


def shutdown():
  """Leaves jax.distributed when it runs (no-op otherwise). Every process calls it at the same point, so that none
  is left waiting for the others' heartbeats."""
  if jax.process_count() > 1:
    jax.distributed.shutdown()


def is_main_process():
  """Process 0 writes every file other than checkpoints."""
  return jax.process_index() == 0


def data_mesh():
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding():
  """Splits the leading (batch) axis over every device."""
  return NamedSharding(data_mesh(), P('data'))


def replicated():
  return NamedSharding(data_mesh(), P())


def host_rows(batch_size):
  """The rows of a global batch that this process feeds to its devices."""
  per_host = batch_size // jax.process_count()
  return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def global_batch(local_rows, sharding=None):
  """A global array split over all devices, from this process's rows of the batch."""
  sharding = sharding or batch_sharding()
  if jax.process_count() == 1:
    return jax.device_put(local_rows, sharding)
  shape = (local_rows.shape[0] * jax.process_count(),) + local_rows.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_rows, shape)


def full_batch(rows, sharding=None):
  """A batch that every process holds whole, split over all devices: each contributes its own rows."""
  return global_batch(rows[host_rows(len(rows))], sharding)


def to_host(x):
  """A (possibly multi-process) global array, gathered whole on every process as numpy."""
  if jax.process_count() == 1 or getattr(x, 'is_fully_addressable', True):
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
