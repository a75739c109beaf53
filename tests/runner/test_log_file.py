"""What a run prints: library log lines go to <workdir>/run.log only (terminal too with --verbose); ours stay."""
import io
import logging
import os

import pytest

from score_sde.runner import log_file, modes

PACKAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(log_file.__file__)), 'checkpoints.py')


def _record(pathname, message):
  return logging.LogRecord('absl', logging.WARNING, pathname, 1, message, None, None)


@pytest.fixture
def terminal():
  """A terminal handler on the root logger, as a library's basicConfig leaves one; removed afterwards."""
  root = logging.getLogger()
  stream = io.StringIO()
  handler = logging.StreamHandler(stream)
  before = list(root.handlers)
  root.addHandler(handler)
  yield stream
  for h in root.handlers[:]:
    if h not in before:
      root.removeHandler(h)
    for f in h.filters[:]:
      h.removeFilter(f)


@pytest.mark.parametrize('verbose', [False, True])
def test_library_lines_go_to_the_log_file_and_ours_to_the_terminal(tmp_path, terminal, verbose):
  path = log_file.route_library_logs(str(tmp_path), verbose=verbose)
  root = logging.getLogger()
  root.handle(_record('/site-packages/orbax/checkpoint_manager.py', 'Waiting for previous save to complete'))
  root.handle(_record(PACKAGE_FILE, 'Skipping checkpoint 40: its arrays do not fit'))
  for h in root.handlers:
    h.flush()
  shown, logged = terminal.getvalue(), open(path).read()
  assert 'Skipping checkpoint 40' in shown and 'Skipping checkpoint 40' in logged
  assert 'Waiting for previous save' in logged
  assert ('Waiting for previous save' in shown) == verbose


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path):
  path = str(tmp_path / 'run.log')
  with pytest.raises(modes.RunFailed, match=r"^OSError: \[Errno 28\] No space left on device \(traceback in .*run\.log\)$"):
    with log_file.tracebacks_to(path):
      raise OSError(28, 'No space left on device')
  assert 'Traceback (most recent call last)' in open(path).read()
