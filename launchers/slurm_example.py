"""A SLURM launcher config for experiments/sweep.py: one GPU per trial, requeued when pre-empted or out of time.

  python experiments/sweep.py --sweep experiments/sweeps/toy_sdes.py --launcher slurm \
      --launcher_config launchers/slurm_example.py

get_launcher() returns the keyword arguments of submitit.AutoExecutor.update_parameters (submitit's own names), so
any parameter submitit knows can be added; keys starting with slurm_ apply only on SLURM, local_ only to
--launcher local, unprefixed ones to both. Copy this file and change the values for your cluster.
"""


def get_launcher():
  return {
      # --- resources of one trial -------------------------------------------------------------------------------
      'slurm_partition': 'gpu',       # sbatch --partition
      'timeout_min': 240,             # sbatch --time, in minutes (also --launcher local's time limit)
      'nodes': 1,                     # sbatch --nodes
      'tasks_per_node': 1,            # sbatch --ntasks-per-node: one task per GPU (launchers/slurm_multinode.py)
      'gpus_per_node': 1,             # sbatch --gpus-per-node
      'cpus_per_task': 8,             # sbatch --cpus-per-task
      'mem_gb': 32,                   # sbatch --mem
      # --- pre-emption and requeue -------------------------------------------------------------------------------
      'slurm_signal_delay_s': 120,    # sbatch --signal=USR2@120: the notice before the time limit; the trial passes
                                      # it to run.py, which saves the step it is on and exits 75, and submitit
                                      # requeues the trial (it resumes from that checkpoint)
      'slurm_additional_parameters': {'requeue': True},  # sbatch --requeue: SLURM requeues a pre-empted job
      'slurm_max_num_timeout': 3,     # how many times a trial may hit its time limit and be requeued
      # --- the job's environment ---------------------------------------------------------------------------------
      'slurm_setup': [                # shell lines run before the trial (the sweep adds `cd <repo>` after them)
          'module load cuda/12.4',
          'source ~/venvs/score_sde/bin/activate',
      ],
      # 'slurm_account': 'my_project', 'slurm_qos': 'normal', 'slurm_constraint': 'a100', ...  (any sbatch option)
  }
