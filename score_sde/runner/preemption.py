"""Pre-emption: a scheduler's notice becomes a saved, resumable stop with exit code 75.

A cluster scheduler warns a job before it kills it: SLURM and Kubernetes send SIGTERM, `sbatch --signal=USR1@120`
sends USR1 before the time limit, submitit sends USR2. `Preemption` listens for SIGTERM and for the signal named by
SCORE_SDE_PREEMPT_SIGNAL (USR1, USR2, ...). The handler only records the notice (a second one changes nothing), so
whatever the run is doing, a checkpoint save included, finishes undisturbed. The loops then ask where to stop:

  at_step(step)    after each training step is dispatched: a single process stops after the step it is on; several
                   processes stop after the step at which JAX's preemption sync point falls (below);
  at_sync(step)    at a host sync point (the end of a chunk of training steps, an evaluation or sampling round):
                   True on every process at the same call, so all of them save the same step and exit together.
                   Every process must call it at the same points, in the same order.

Agreement over several processes takes two routes. Once jax.distributed runs, JAX's own SIGTERM notifier replaces
any Python SIGTERM handler, and `multihost_utils.reached_preemption_sync_point(n)` turns a SIGTERM to any process into
the same stopping call on all: the one whose n is the largest n any process had passed when the notice spread, plus
one. So n must grow by one per call and mean the same on every process. Training passes its step numbers, as orbax's
CheckpointManager.save also does (to that same function); other loops pass the count of their at_sync calls. A notice
JAX does not listen for (the other signal, or a SIGTERM that came before jax.distributed started) is a local flag
that the processes share by a one-integer all-gather at each at_sync.

The run then saves what it has, makes sure the save is finalized, and raises `Preempted`; run.py prints its one line
and exits with EXIT_CODE (75, sysexits' EX_TEMPFAIL: "saved, resumable"). Running the same command again resumes.
"""
import os
import signal

EXIT_CODE = 75
SIGNAL_VARIABLE = 'SCORE_SDE_PREEMPT_SIGNAL'
_UNCATCHABLE = ('SIGKILL', 'SIGSTOP')


class Preempted(Exception):
  """The run stopped on a pre-emption notice after saving what it had; the message says what was saved."""


def signal_named(name):
  """signal.Signals for 'USR1', 'SIGUSR1', 'usr2' or '10'; ValueError (one line) for anything else."""
  text = str(name).strip()
  try:
    found = signal.Signals(int(text)) if text.isdigit() else signal.Signals[
        'SIG' + text.upper().removeprefix('SIG')]
  except (KeyError, ValueError):
    found = None
  if found is None or found.name in _UNCATCHABLE:
    raise ValueError(f'{SIGNAL_VARIABLE}={name!r} is not a signal a program can catch; use a name such as USR1 or '
                     'USR2 (the one your scheduler sends before it stops the job).')
  return found


class Preemption:
  """The pre-emption notices of one run: install() before the work starts, then at_step() / at_sync() in the loops.

  An instance that was never installed never asks to stop, so code paths without pre-emption handling (tests,
  library use) can pass one around freely.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = tuple(dict.fromkeys(signals))
    self.received = None  # the name of the first notice
    self.installed = False
    self._calls = 0

  @classmethod
  def from_environment(cls, environ=None):
    """SIGTERM, plus the signal named by SCORE_SDE_PREEMPT_SIGNAL when it is set (ValueError if it names none)."""
    name = (os.environ if environ is None else environ).get(SIGNAL_VARIABLE, '')
    return cls((signal.SIGTERM,) + ((signal_named(name),) if name.strip() else ()))

  def install(self):
    for signum in self.signals:
      signal.signal(signum, self._notice)
    self.installed = True
    return self

  def uninstall(self):
    """Back to the default actions (a run that ends without a loop to stop, such as --check)."""
    for signum in self.signals:
      signal.signal(signum, signal.SIG_DFL)
    self.installed = False

  def _notice(self, signum, frame):  # pylint: disable=unused-argument
    if self.received is None:
      self.received = signal.Signals(signum).name

  @property
  def requested(self):
    return self.received is not None

  def at_step(self, step):
    """Whether to stop after training step `step` (just dispatched; the steps counted one by one)."""
    if not self.installed:
      return False
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:
      return self.received is not None
    return self._sync_point(step)

  def at_sync(self, step=None):
    """Whether to stop here, the same answer on every process. Training passes its step; other loops nothing."""
    if not self.installed:
      return False
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:
      return self.received is not None
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    if step is None:
      self._calls += 1
      step = self._calls
    by_jax = self._sync_point(step)
    by_flag = bool(np.any(multihost_utils.process_allgather(np.int32(self.received is not None))))
    if (by_jax or by_flag) and self.received is None:
      self.received = 'SIGTERM' if by_jax else 'a notice to another process'
    return by_jax or by_flag

  @staticmethod
  def _sync_point(n):
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    try:
      return bool(multihost_utils.reached_preemption_sync_point(n))
    except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM then reaches our own handler
      return False
