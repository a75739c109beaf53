"""How a sweep runs its trials: `--launcher serial | print | local | slurm`, and the launcher config files.

  serial  one trial after another in the sweep's own process (the default)
  print   one shell line per trial, for a scheduler of your own; nothing runs
  local   each trial a local process through submitit's LocalExecutor, at most --max_parallel at a time (the
          executor has no cap of its own: the sweep starts a trial when another ends); the time limit is
          timeout_min (submitit's default of 2 minutes is replaced by DEFAULT_TIMEOUT_MIN)
  slurm   one SLURM job array through submitit, --max_parallel tasks at a time (sbatch --array=0-N%max_parallel);
          the sweep submits and returns, and running it again collects what finished, leaves queued or running
          trials alone and re-submits the failed ones

A launcher config (`--launcher_config launchers/<name>.py`) is a python file whose get_launcher() returns the keyword
arguments of submitit.AutoExecutor.update_parameters: timeout_min, nodes, tasks_per_node, gpus_per_node,
cpus_per_task, mem_gb, and per cluster slurm_partition, slurm_signal_delay_s, slurm_setup,
slurm_additional_parameters ({'requeue': True} for sbatch --requeue), local_setup, ...; the keys ending in
max_num_timeout (slurm_max_num_timeout, local_max_num_timeout: how many times a trial is requeued after its time
limit) go to the executor itself. launchers/slurm_example.py documents each field.

Every job starts in the repository root with it on PYTHONPATH (two lines added after the config's setup), so the
pickled trial (experiments/trial.py) and run.py are found on the compute node.
"""
import os
import re
import shlex
import shutil
import time

from experiments import settings_file
from score_sde.registry import Registry

LAUNCHERS = Registry('--launcher')  # name -> launch(trials, options) yielding (event, label, detail); info: help
DEFAULT_TIMEOUT_MIN = 24 * 60
ALIVE = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING', 'SUSPENDED', 'RESIZING', 'REQUEUE_HOLD',
         'REQUEUE_FED', 'SIGNALING', 'STAGE_OUT', 'UNKNOWN')  # UNKNOWN: accounting has not seen it yet


class LaunchError(ValueError):
  """A launcher that cannot start: a bad launcher config, or no SLURM on this machine."""


class Options:
  """What a launcher needs besides the trials: the repository, the sweep's output folder, its config, the cap."""

  def __init__(self, repo, out, config=None, max_parallel=None, poll_seconds=1.):
    self.repo, self.out, self.config = str(repo), str(out), dict(config or {})
    self.max_parallel, self.poll_seconds = max_parallel, poll_seconds

  @property
  def jobs_folder(self):
    return os.path.join(self.out, 'submitit')


def load_config(path):
  """The dict that get_launcher() of a launcher file returns."""
  config = settings_file.function_of(path, 'get_launcher', 'launcher config', LaunchError,
                                     hint='; see launchers/slurm_example.py')()
  config = config.to_dict() if hasattr(config, 'to_dict') else config
  if not isinstance(config, dict):
    raise LaunchError(f'get_launcher() of {path} must return a dict of submitit parameters, '
                      f'not {type(config).__name__}')
  return config


def executor(cluster, options):
  """A submitit.AutoExecutor for `cluster` ('local' or 'slurm') with the launcher config applied; a config it
  refuses leaves no folder behind."""
  created = next((p for p in (options.out, options.jobs_folder) if not os.path.exists(p)), None)
  try:
    return _executor(cluster, options)
  except LaunchError:
    if created:
      shutil.rmtree(created, ignore_errors=True)
    raise


def _executor(cluster, options):
  import submitit  # pylint: disable=import-outside-toplevel
  config = dict(options.config)
  own = {key: config.pop(key) for key in list(config) if key.endswith('max_num_timeout')}
  try:
    made = submitit.AutoExecutor(folder=options.jobs_folder, cluster=cluster, **own)
  except RuntimeError as error:
    raise LaunchError(f'--launcher {cluster}: {error} (submitit looks for srun on PATH)') from None
  except (AssertionError, ValueError, TypeError) as error:
    raise LaunchError(f'launcher config: {str(error).splitlines()[0]}') from None
  repo = shlex.quote(options.repo)
  setup = list(config.pop(f'{cluster}_setup', [])) + [
      f'cd {repo}', f'export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}']
  parameters = {'timeout_min': DEFAULT_TIMEOUT_MIN, 'name': os.path.basename(options.out), **config,
                f'{cluster}_setup': setup}
  if cluster == 'slurm' and options.max_parallel:
    parameters['slurm_array_parallelism'] = options.max_parallel
  try:
    made.update_parameters(**parameters)
  except (NameError, AssertionError, ValueError, TypeError) as error:
    raise LaunchError(f'launcher config: {str(error).splitlines()[0]} (see launchers/slurm_example.py)') from None
  return made


def at_most(limit, items, start, poll_seconds=1.):
  """Starts start(item) -> job (with .done()) for each item, never more than `limit` unfinished at once; yields
  ('started', item, job) and ('finished', item, job) in the order things happen."""
  waiting, running = list(items), []
  while waiting or running:
    while waiting and len(running) < limit:
      item = waiting.pop(0)
      job = start(item)
      running.append((item, job))
      yield 'started', item, job
    done = [(item, job) for item, job in running if job.done()]
    for item, job in done:
      running.remove((item, job))
      yield 'finished', item, job
    if not done:
      time.sleep(poll_seconds)


def job_status(trial, job):
  """The status the trial returned, or, for a job that ended otherwise (timed out too often, killed), its record
  on disk marked as pre-empted (it resumes from its checkpoint when the sweep runs again) or failed."""
  try:
    return job.result()
  except Exception as error:  # submitit's UncompletedJobError / FailedJobError carry the job's own story
    lines = str(error).strip().splitlines() or [type(error).__name__]
    raised = [line for line in lines if re.match(r'^[\w.]+(Error|Exception): ', line)]  # the job's own exception
    last = (raised or lines)[-1].strip()[:300]
    saved = trial.read_status() or {}
    kind = 'preempted' if saved.get('status') in ('requeued', 'preempted') else 'failed'
    extra = {k: saved[k] for k in ('mode', 'returncode') if k in saved}
    return trial.status(kind, **extra, error=f'job {job.job_id}: {last}')


@LAUNCHERS.register('serial', help='one trial after another in this process (the default)')
def launch_serial(trials, options):  # pylint: disable=unused-argument
  for label, trial in trials:
    yield 'started', label, ' → '.join(trial.modes) + ' ...'
    yield 'finished', label, trial()


@LAUNCHERS.register('print', help='print one shell line per trial and run nothing')
def launch_print(trials, options):  # pylint: disable=unused-argument
  for label, trial in trials:
    yield 'line', label, trial.command


@LAUNCHERS.register('local', help="local processes through submitit's LocalExecutor, --max_parallel at a time")
def launch_local(trials, options):
  if not trials:
    return
  made = executor('local', options)
  limit = options.max_parallel or 1
  for event, (label, trial), job in at_most(limit, trials, lambda item: made.submit(item[1]), options.poll_seconds):
    if event == 'started':
      yield event, label, f'started as local job {job.job_id}'
    else:
      yield event, label, job_status(trial, job)


@LAUNCHERS.register('slurm', help='one SLURM job array through submitit; run the sweep again to collect')
def launch_slurm(trials, options):
  if not trials:
    return
  made = executor('slurm', options)
  with made.batch():
    jobs = [made.submit(trial) for _, trial in trials]
  for (label, trial), job in zip(trials, jobs):
    yield 'submitted', label, trial.status('submitted', job_id=job.job_id)


def slurm_job_state(options, job_id):
  """SLURM's state of a submitted trial (sacct, through submitit)."""
  import submitit  # pylint: disable=import-outside-toplevel
  return submitit.SlurmJob(folder=options.jobs_folder, job_id=job_id).state
