"""Test set-up: quiet TensorFlow, and this folder on sys.path so that every test module reads `helpers`; the one
uninterrupted reference training that the resume tests of several modules compare against."""
import os
import sys

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory):
  """The toy training of helpers.SMALL, uninterrupted, to step 300. Tests read it; they copy it to change it."""
  from helpers import SMALL, finish, run_cli  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  code, _, err = finish(run_cli(workdir, '--mode=train', *SMALL))
  assert code == 0, err[-2000:]
  return workdir
