"""One trial of a sweep: its run.py commands, run in order from the repository root, in the trial's fixed workdir,
with <out>/<trial>/status.json and logs/<mode>.out|.err.

The same object runs in the sweep's own process (--launcher serial) or as a submitit job (local, slurm). As a job it
is a submitit.helpers.Checkpointable. submitit's wrapper ignores SIGTERM and signals pre-emption and the time limit
with USR2 (SUBMITIT_PREEMPT_SIGNAL changes it); it requeues a job only if its callable has checkpoint(), which
returns the resubmission. So a trial starts run.py with SCORE_SDE_PREEMPT_SIGNAL set to that signal, and
checkpoint() passes the signal on to the running run.py, waits for it to save and exit (code 75), and returns this
trial, which remembers the modes it has finished: the requeued job skips them, and run.py resumes from its
checkpoint in the same workdir.

status.json: {'trial', 'params', 'flags', 'command', 'status', 'seconds': {mode: s}, ...}; status is 'running',
'ok', 'failed' (with mode, returncode, error: the last line of the mode's stderr), 'preempted' (run.py exited 75
on a notice of its own, e.g. SLURM's SIGTERM: running the sweep again resumes it) or 'requeued'.
"""
import json
import os
import signal
import socket
import subprocess
import time

import submitit

PREEMPTED = 75  # run.py's exit code for "saved, resumable" (score_sde/runner/preemption.py)
SIGNAL_VARIABLE = 'SCORE_SDE_PREEMPT_SIGNAL'


def last_line(path):
  with open(path, errors='replace') as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def read_status(folder):
  """A trial's status.json, or None when it has none (or a damaged one)."""
  try:
    with open(os.path.join(folder, 'status.json')) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _job_rank():
  """This task's rank in a submitit job (several for a multi-node trial); 0 outside submitit."""
  if not os.environ.get('SUBMITIT_EXECUTOR'):
    return 0
  return submitit.JobEnvironment().global_rank


def _reap(child):
  """Waits for `child` with os.waitpid, not Popen.wait: checkpoint() runs in a signal handler that may interrupt
  a wait on the same child, and Popen.wait holds a lock that the handler's own wait would then never get."""
  if child.returncode is None:
    try:
      _, status = os.waitpid(child.pid, 0)
      child.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:  # reaped by the wait this handler interrupted
      pass
  return child.returncode


class Trial(submitit.helpers.Checkpointable):
  """A callable that runs one trial's modes and returns its status dict."""

  def __init__(self, name, params, flags, folder, modes, argvs, cwd, command=''):
    self.name, self.params, self.flags = name, params, flags
    self.folder, self.modes, self.argvs, self.cwd, self.command = str(folder), list(modes), argvs, str(cwd), command
    self.finished_modes, self.seconds = [], {}
    self._child, self._started = None, 0.

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_child'] = None  # a running process does not travel with a resubmission
    return state

  def read_status(self):
    return read_status(self.folder)

  def status(self, status, **extra):
    record = {'trial': self.name, 'params': self.params, 'flags': self.flags, 'command': self.command,
              'status': status, 'seconds': dict(self.seconds), **extra}
    if os.environ.get('SUBMITIT_EXECUTOR'):  # so that a later sweep can ask the scheduler about this job
      record.setdefault('job_id', submitit.JobEnvironment().job_id)
    if _job_rank() == 0:
      os.makedirs(self.folder, exist_ok=True)
      tmp = os.path.join(self.folder, f'status.json.tmp{os.getpid()}')
      with open(tmp, 'w') as f:
        json.dump(record, f, indent=2)
      os.replace(tmp, os.path.join(self.folder, 'status.json'))
    return record

  def __call__(self):
    self.status('running', host=socket.gethostname(), pid=os.getpid())
    for mode, argv in zip(self.modes, self.argvs):
      if mode in self.finished_modes:
        continue
      code, err = self._run(mode, argv)
      self._add_seconds(mode)
      if code != 0:
        return self.status('preempted' if code == PREEMPTED else 'failed', mode=mode, returncode=code,
                           error=last_line(err))
      self.finished_modes.append(mode)
    return self.status('ok')

  def _run(self, mode, argv):
    logs = os.path.join(self.folder, 'logs')
    os.makedirs(logs, exist_ok=True)
    rank = _job_rank()
    base = os.path.join(logs, mode if rank == 0 else f'{mode}.rank{rank}')
    env = dict(os.environ)
    if os.environ.get('SUBMITIT_EXECUTOR'):
      env[SIGNAL_VARIABLE] = submitit.JobEnvironment.USR_SIG
    with open(base + '.out', 'a') as stdout, open(base + '.err', 'a') as stderr:
      self._started = time.time()
      self._child = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=stdout, stderr=stderr)
      try:
        return _reap(self._child), base + '.err'
      finally:
        child, self._child = self._child, None
        if child.returncode is None:  # interrupted other than by checkpoint() (the job is being killed)
          child.kill()
          _reap(child)

  def _add_seconds(self, mode):
    self.seconds[mode] = round(self.seconds.get(mode, 0.) + time.time() - self._started, 1)

  def checkpoint(self, *args, **kwargs):
    """Called by submitit on pre-emption or at the time limit: passes the signal to run.py, waits for it to save
    and exit, and returns this trial for resubmission."""
    child = self._child
    if child is not None and child.returncode is None:
      child.send_signal(getattr(signal, 'SIG' + submitit.JobEnvironment.USR_SIG))
      code = _reap(child)
      mode = self.modes[len(self.finished_modes)]
      self._add_seconds(mode)
      self.status('requeued', mode=mode, returncode=code, error=last_line(os.path.join(self.folder, 'logs',
                                                                                          f'{mode}.err')))
    return super().checkpoint(*args, **kwargs)
