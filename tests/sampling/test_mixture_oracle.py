"""Samplers run on the exact score of a Gaussian mixture must reproduce the mixture (an analytic oracle)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import MIXTURE, N_SAMPLES, PAPER_SDES
from score_sde import sampling, sde_lib, toy

FINAL_NOISE = {'vesde': 0.01, 'vpsde': np.sqrt(0.1 / 1000)}  # G of the last step: σ_min, sqrt(β_min / N)


def _pc_samples(name, corrector, denoise=True):
  sde = PAPER_SDES[name]()
  sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor='reverse_diffusion', corrector=corrector,
                                    snr=0.16, n_steps=1, denoise=denoise)
  return sampler(jax.random.PRNGKey(1), MIXTURE.marginal_score(sde))


@pytest.mark.parametrize('name', list(PAPER_SDES))
@pytest.mark.parametrize('corrector', ['none', 'langevin'])
def test_pc_sampler_reproduces_the_mixture(name, corrector):
  samples, nfe = _pc_samples(name, corrector)
  assert int(nfe) == 1000 * (2 if corrector == 'langevin' else 1)
  failures = toy.mixture_failures(toy.mixture_report(samples, MIXTURE, jax.random.PRNGKey(7)))
  assert not failures, failures


@pytest.mark.parametrize('name', list(PAPER_SDES))
def test_ode_sampler_reproduces_the_mixture(name):
  sde = PAPER_SDES[name]()
  sampler = sampling.get_ode_sampler(sde, (N_SAMPLES, 2), rtol=1e-5, atol=1e-5, eps=1e-3)
  samples, nfe = sampler(jax.random.PRNGKey(2), MIXTURE.marginal_score(sde))
  assert 10 < int(nfe) < 2000
  failures = toy.mixture_failures(toy.mixture_report(samples, MIXTURE, jax.random.PRNGKey(8)))
  assert not failures, failures


@pytest.mark.parametrize('name', ['vesde', 'vpsde'])
def test_denoise_removes_the_noise_of_the_last_step(name):
  """Same key: the chains agree up to the last predictor step, whose noise G z denoising drops."""
  denoised, _ = _pc_samples(name, 'none', denoise=True)
  noisy, _ = _pc_samples(name, 'none', denoise=False)
  rms = float(jnp.sqrt(jnp.mean((noisy - denoised) ** 2)))
  assert 0.9 < rms / FINAL_NOISE[name] < 1.1, (rms, FINAL_NOISE[name])


@pytest.mark.parametrize('name', list(PAPER_SDES))
@pytest.mark.parametrize('bug', ['no factor 2 in the reverse drift', 'no ½ in the probability flow'])
def test_oracle_catches_known_bugs(monkeypatch, name, bug):
  """The bounds are tight enough to fail on the classic mistakes (so the tests above can fail)."""
  if bug.startswith('no factor 2'):
    sde = PAPER_SDES[name]()
    half_score = lambda x, t: 0.5 * MIXTURE.marginal_score(sde)(x, t)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor='reverse_diffusion', corrector='none')
    samples, _ = sampler(jax.random.PRNGKey(1), half_score)
  else:
    sde = PAPER_SDES[name]()
    sampler = sampling.get_ode_sampler(sde, (N_SAMPLES, 2), rtol=1e-4, atol=1e-4)
    double_score = lambda x, t: 2. * MIXTURE.marginal_score(sde)(x, t)
    samples, _ = sampler(jax.random.PRNGKey(2), double_score)
  assert toy.mixture_failures(toy.mixture_report(samples, MIXTURE, jax.random.PRNGKey(8)))


def test_nfe_counts_every_score_evaluation():
  """nfe equals the score calls counted on the host, for PC (with and without corrector) and ODE."""
  calls = []
  sde = sde_lib.VPSDE(N=20)
  exact = MIXTURE.marginal_score(sde)

  def counted_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  for sampler in (sampling.get_pc_sampler(sde, (8, 2), 'reverse_diffusion', 'langevin', n_steps=2),
                  sampling.get_pc_sampler(sde, (8, 2), 'none', 'ald', n_steps=1),
                  sampling.get_ode_sampler(sde, (8, 2), denoise=True)):
    calls.clear()
    x, nfe = sampler(jax.random.PRNGKey(0), counted_score)
    jax.block_until_ready(x)
    assert int(nfe) == len(calls) > 0
