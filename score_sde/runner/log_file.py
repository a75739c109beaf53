"""What a run prints and what it only logs: the project's own lines on the terminal, library log lines and
tracebacks in <workdir>/run.log (and on the terminal too with --verbose).

Library log lines are those of absl/Python logging whose source file lies outside this package, such as
orbax's "Waiting for previous save to complete". Our own warnings (a skipped corrupt checkpoint, say) stay on
the terminal. Exceptions that no caller can catch (in library threads, or "unraisable" ones raised in callbacks,
such as the hundreds of "Event loop is closed" that orbax's I/O threads leave after a failed write) go to the log
file too. A log file that cannot be written (the disk is full) is skipped silently: the run's own error line says
what happened.
"""
import contextlib
import logging
import os
import sys
import tempfile
import threading
import traceback

import jax

from score_sde import parallel
from score_sde.config_table import ConfigError
from score_sde.runner.modes import RunFailed
from score_sde.runner.preemption import Preempted
from score_sde.runner.write_errors import describe

LOG_FILE = 'run.log'
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OwnLinesOnly(logging.Filter):
  def filter(self, record):
    return os.path.abspath(record.pathname).startswith(_PACKAGE)


class _LogOnceTheFolderExists(logging.Handler):
  """Appends records to a file, holding them in memory until its folder exists: a run that stops on missing
  data before it made its workdir leaves no workdir behind."""

  def __init__(self, path):
    super().__init__()
    self.path, self.waiting = path, []
    self.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s'))

  def emit(self, record):
    self.waiting.append(self.format(record) + '\n')
    if os.path.isdir(os.path.dirname(self.path)):
      _append(self.path, ''.join(self.waiting))
      self.waiting = []


def _append(path, text):
  """Appends to the log file; on a full disk (or any write error) the text is dropped, never printed instead."""
  try:
    with open(path, 'a') as f:
      f.write(text)
  except OSError:
    pass


def log_path(workdir):
  """<workdir>/run.log on process 0; other processes write nothing in the workdir, so theirs is in the temp folder."""
  if parallel.is_main_process():
    return os.path.join(os.path.abspath(workdir), LOG_FILE)
  return os.path.join(tempfile.gettempdir(), f'score_sde-{os.getpid()}-process{jax.process_index()}.log')


def route_library_logs(workdir, verbose=False):
  """Sends every log record to the run's log file (log_path) and keeps library records off the terminal unless
  `verbose`. Returns the log file's path."""
  from absl import logging as absl_logging
  path = log_path(workdir)
  handler = _LogOnceTheFolderExists(path)
  root = logging.getLogger()
  if not verbose:  # whoever installed the terminal handlers (absl's, or a library's basicConfig), filter them all
    for terminal in root.handlers + [absl_logging.get_absl_handler()]:
      terminal.addFilter(_OwnLinesOnly())
  root.addHandler(handler)
  if not verbose:
    sys.unraisablehook = lambda unraisable: _append(path, _uncaught('Unraisable exception', unraisable))
    threading.excepthook = lambda args: _append(path, _uncaught(f'Exception in thread {args.thread.name}', args))
  return path


def _uncaught(what, info):
  lines = traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback)
  return f'{what}:\n' + ''.join(lines)


@contextlib.contextmanager
def tracebacks_to(path, verbose=False):
  """An unexpected exception becomes RunFailed (one `error:` line, exit code 1) naming the log file, which
  holds its traceback; with `verbose` the traceback is printed too."""
  try:
    yield
  except (RunFailed, ConfigError, Preempted, KeyboardInterrupt, SystemExit):
    raise
  except Exception as error:  # anything else is a bug or an environment failure: keep the whole story in the log
    text = traceback.format_exc()
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
      pass
    _append(path, text)
    if verbose:
      print(text, end='', flush=True)
    first = str(error).splitlines()[0] if str(error) else ''
    message = describe(error) or f'{type(error).__name__}: {first}'
    raise RunFailed(f'{message} (traceback in {path})') from None
