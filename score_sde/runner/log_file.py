"""What a run prints and what it only logs: the project's own lines on the terminal, library log lines and
tracebacks in <workdir>/run.log (and on the terminal too with --verbose).

Library log lines are those of absl/Python logging whose source file lies outside this package, such as
orbax's "Waiting for previous save to complete". Our own warnings (a skipped corrupt checkpoint, say) stay on
the terminal.
"""
import contextlib
import logging
import os
import tempfile
import traceback

import jax

from score_sde import parallel
from score_sde.config_table import ConfigError
from score_sde.runner.modes import RunFailed

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
      with open(self.path, 'a') as f:
        f.writelines(self.waiting)
      self.waiting = []


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
  return path


@contextlib.contextmanager
def tracebacks_to(path, verbose=False):
  """An unexpected exception becomes RunFailed (one `error:` line, exit code 1) naming the log file, which
  holds its traceback; with `verbose` the traceback is printed too."""
  try:
    yield
  except (RunFailed, ConfigError, KeyboardInterrupt, SystemExit):
    raise
  except Exception as error:  # anything else is a bug or an environment failure: keep the whole story in the log
    text = traceback.format_exc()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a') as f:
      f.write(text)
    if verbose:
      print(text, end='', flush=True)
    first = str(error).splitlines()[0] if str(error) else ''
    raise RunFailed(f'{type(error).__name__}: {first} (traceback in {path})') from None
