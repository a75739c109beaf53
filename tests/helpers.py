"""What several test modules share: the official fixtures, the paper's SDEs, the exact mixture, run.py in a
subprocess. Test modules import from here (or use conftest fixtures), never from each other."""
import os
import pathlib
import subprocess
import sys
import threading
import time

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


def component_log_probs(mixture, sde, x, t):
  """log w_k + log N(x; a μ_k, (a² s_k² + σ²) I): (batch, K), from the SDE's marginal."""
  import jax.numpy as jnp
  a, sigma = sde.marginal_prob(jnp.ones_like(t), t)
  w, mu, s = (jnp.asarray(v, jnp.float32) for v in (mixture.weights, mixture.means, mixture.stds))
  var = a[:, None] ** 2 * s ** 2 + sigma[:, None] ** 2
  sq = jnp.sum((x[:, None, :] - a[:, None, None] * mu) ** 2, axis=-1)
  return jnp.log(w) - 0.5 * sq / var - 0.5 * mu.shape[1] * jnp.log(2 * jnp.pi * var)


def exact_classifier(mixture, sde):
  """log p_t(y | x) of the labelled mixture: the component posterior under the marginal at t."""
  import jax
  return lambda x, t: jax.nn.log_softmax(component_log_probs(mixture, sde, x, t), axis=-1)


def component_failures(samples, labels, means, stds, mean_tol=0.1, std_tol=0.08):
  """Per label k: mean error (in stds), std ratios and one-sample KS against the exact N(means[k], stds[k]²)."""
  from scipy import stats
  samples, labels = np.asarray(samples, np.float64), np.asarray(labels)
  samples = samples.reshape(len(samples), -1)
  failures, figures = [], {}
  for k, (mu, s) in enumerate(zip(means, stds)):
    mu = np.atleast_1d(mu)
    group = samples[labels == k]
    ks_bound = 1.95 / np.sqrt(len(group))  # 99.9 % of the KS null distribution
    mean_err = np.abs(group.mean(0) - mu).max() / s
    std_ratio = group.std(0) / s
    ks = max(stats.kstest(group[:, d], stats.norm(mu[d], s).cdf).statistic for d in range(group.shape[1]))
    figures[k] = (round(float(mean_err), 4), np.round(std_ratio, 4).tolist(), round(float(ks), 4))
    if not np.isfinite(group).all():
      failures.append(f'class {k}: non-finite samples')
    if mean_err > mean_tol:
      failures.append(f'class {k}: mean off by {mean_err:.3f} stds > {mean_tol}')
    if np.any(np.abs(std_ratio - 1) > std_tol):
      failures.append(f'class {k}: std ratio {std_ratio} beyond 1 ± {std_tol}')
    if ks > ks_bound:
      failures.append(f'class {k}: KS {ks:.3f} > {ks_bound:.3f}')
  return failures, figures


# --- run.py in a subprocess -----------------------------------------------------------------------------------

TOY = str(REPO / 'configs' / 'toy' / 'gmm.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0', JAX_PLATFORMS='cpu')


# A toy training of 300 steps: pre-emption snapshots every 10 steps, permanent checkpoints every 100.
SMALL = ['--config.training.n_iters=300', '--config.training.n_jitted_steps=10', '--config.training.log_freq=10',
         '--config.training.eval_freq=100', '--config.training.snapshot_freq=100',
         '--config.training.snapshot_freq_for_preemption=10', '--config.training.snapshot_sampling=False',
         '--config.training.batch_size=64', '--config.model.nf=32']


def run_cli(workdir, *args, config=TOY, env=None, ulimit_kb=None, **kwargs):
  """run.py in a subprocess; with `ulimit_kb`, through bash with files capped at that size (a write past it fails
  with EFBIG: Python ignores SIGXFSZ), standing in for a full disk."""
  command = [sys.executable, str(REPO / 'run.py'), f'--config={config}', f'--workdir={workdir}', *args]
  if ulimit_kb is not None:
    command = ['bash', '-c', f'ulimit -f {int(ulimit_kb)}; exec "$@"', 'bash', *command]
  return subprocess.Popen(command, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def finish(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


class Watched:
  """run.py in a subprocess whose stderr lines are read as they come (progress lines show where it is)."""

  def __init__(self, workdir, *args, **kwargs):
    self.process = run_cli(workdir, *args, **kwargs)
    self.lines, self.out = [], []
    self.readers = [threading.Thread(target=self._read, args=(self.process.stderr, self.lines), daemon=True),
                    threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True)]
    for reader in self.readers:
      reader.start()

  @staticmethod
  def _read(stream, into):
    for line in stream:
      into.append(line.rstrip('\n'))

  def wait_for(self, text, timeout=300):
    deadline = time.time() + timeout
    while not any(text in line for line in self.lines):
      assert self.process.poll() is None, f'ended ({self.process.returncode}) before {text!r}: {self.lines[-5:]}'
      assert time.time() < deadline, f'no {text!r} after {timeout} s'
      time.sleep(0.05)

  def finish(self, timeout=300):
    code = self.process.wait(timeout=timeout)
    for reader in self.readers:
      reader.join(timeout=10)
    return code

  def messages(self):
    """stderr without the progress lines."""
    return [line for line in self.lines if line.strip() and not line.split(':')[0] in ('train', 'sample', 'likelihood', 'cfg')
            and not line.startswith('eval ')]



def final_params(workdir):
  """(params leaves, EMA leaves, step) of a run's newest good checkpoint."""
  import jax
  from score_sde.runner import checkpoints
  state = checkpoints.restore(str(workdir))
  return jax.tree.leaves(state.params), jax.tree.leaves(state.params_ema), int(state.step)


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
