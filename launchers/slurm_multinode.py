"""A SLURM launcher config for sweeps whose trials are multi-node: each trial is one job of 2 nodes x 8 GPUs, one
task (one run.py process) per GPU, joined by jax.distributed, which reads the SLURM step's variables itself.

  python experiments/sweep.py --sweep <your sweep> --launcher slurm --launcher_config launchers/slurm_multinode.py

submitit starts the trial in every task; each task's trial starts its own run.py, which inherits the task's
SLURM_PROCID and SLURM_LOCALID. The pitfalls (docs/scaling.md#pitfalls): one task per GPU, with all of the node's
GPUs visible to each task (JAX then picks the one of SLURM_LOCALID; with --gpus-per-task=1 set JAX_LOCAL_DEVICE_IDS=0);
and the coordinator's port (JAX derives it from SLURM_JOB_ID: set JAX_COORDINATOR_PORT as below when jobs share a
first node). The fields are those of launchers/slurm_example.py.
"""


def get_launcher():
  return {
      'slurm_partition': 'gpu',
      'timeout_min': 24 * 60,
      'nodes': 2,
      'tasks_per_node': 8,            # one task per GPU
      'gpus_per_node': 8,             # every GPU of the node visible to each task; JAX takes the SLURM_LOCALID-th
      'cpus_per_task': 8,
      'mem_gb': 400,
      'slurm_signal_delay_s': 300,    # USR2 five minutes before the time limit: every process saves the same step
      'slurm_additional_parameters': {'requeue': True},
      'slurm_max_num_timeout': 10,
      'slurm_setup': [
          'source ~/venvs/score_sde/bin/activate',
          # a port of this job's own (JAX would take 61440 + SLURM_JOB_ID % 4096 on the first node)
          'export JAX_COORDINATOR_PORT=$((20000 + SLURM_JOB_ID % 20000))',
      ],
  }
