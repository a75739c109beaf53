"""Shared test helpers: the official reference fixtures, read at run time from ../shared/reference."""
import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get('SCORE_SDE_REFERENCE', REPO.parent / 'shared' / 'reference'))


def load_reference(name):
  """Loads `<name>.npz` from the official-code fixtures, or skips the test with the reason."""
  path = REFERENCE_DIR / f'{name}.npz'
  if not path.exists():
    pytest.skip(f'official reference fixture {path} is absent (it ships beside the repo for developers, '
                'not in user clones; set SCORE_SDE_REFERENCE to its folder)')
  return dict(np.load(path))


def assert_rel_close(actual, expected, rtol, what='', scale=None):
  """max|actual - expected| <= rtol * max|expected| (or rtol * scale), the fixtures' own error measure."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(np.abs(expected).max() if scale is None else scale, 1e-12)
  err = np.abs(actual - expected).max() / scale
  assert err <= rtol, f'{what}: relative error {err:.3g} > {rtol}'
