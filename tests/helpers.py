"""What several test modules share: the official fixtures, the paper's SDEs, the exact mixture, run.py in a
subprocess. Test modules import from here (or use conftest fixtures), never from each other."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from score_sde import sde_lib, toy

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get('SCORE_SDE_REFERENCE', REPO.parent / 'shared' / 'reference'))


# --- the official code's numbers ------------------------------------------------------------------------------

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


# --- the paper's SDEs and an exact-score mixture --------------------------------------------------------------

PAPER_SDES = {  # name -> N -> the SDE with the paper's CIFAR-10 parameters
    'vesde': lambda N=1000: sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=N),
    'vpsde': lambda N=1000: sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=N),
    'subvpsde': lambda N=1000: sde_lib.subVPSDE(beta_min=0.1, beta_max=20., N=N),
}
MIXTURE = toy.get_toy_distribution('gmm')
N_SAMPLES = 4000


# --- run.py in a subprocess -----------------------------------------------------------------------------------

TOY = str(REPO / 'configs' / 'toy' / 'gmm.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0', JAX_PLATFORMS='cpu')


def run_cli(workdir, *args, config=TOY, env=None, **kwargs):
  command = [sys.executable, str(REPO / 'run.py'), f'--config={config}', f'--workdir={workdir}', *args]
  return subprocess.Popen(command, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def finish(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


# --- the official sde_steps fixture ---------------------------------------------------------------------------

def time_cases(ref, name):
  """(t vector, key prefix, index into stacked arrays) for each fixed t and the mixed batch."""
  import jax.numpy as jnp
  for i, t in enumerate(ref['t_values']):
    yield jnp.full((3,), t, jnp.float32), f'{name}/', i
  yield jnp.asarray(ref['t_mixed']), f'{name}/mixed/', None


def stored(ref, key, i):
  return ref[key] if i is None else ref[key][i]


def analytic_score(sde, ref_prefix, ref, i):
  """The fixture's exact score of Gaussian data per example: -(x - m) / s²."""
  m, s2 = stored(ref, ref_prefix + 'gauss_m', i), stored(ref, ref_prefix + 'gauss_s2', i)
  return lambda x, t: -(x - m[:, None, None, None]) / s2[:, None, None, None]


class StoredNoise:
  """A `randn_like(rng, x)` for the samplers that returns stored draws (the official code's) in order and counts
  them: draw k is draws[count + k], whatever the key."""

  def __init__(self, draws=None, count=0):
    self.draws, self.count = draws, count

  def __call__(self, rng, x):
    import jax.numpy as jnp
    k = self.count
    self.count += 1
    return jnp.asarray(self.draws[k]).reshape(x.shape)
