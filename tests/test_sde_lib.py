"""SDE quantities against the official code's numbers (sde_steps.npz) and the paper's closed forms."""
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import PAPER_SDES as SDES, analytic_score, assert_rel_close, load_reference, stored, time_cases
from score_sde import sde_lib



@pytest.fixture(scope='module')
def ref():
  return load_reference('sde_steps')



@pytest.mark.parametrize('name', list(SDES))
def test_sde_quantities_match_official(ref, name):
  sde = SDES[name]()
  x = jnp.asarray(ref['x'])
  for t, prefix, i in time_cases(ref, name):
    mean, std = sde.marginal_prob(x, t)
    drift, diffusion = sde.sde(x, t)
    f, G = sde.discretize(x, t)
    score_fn = analytic_score(sde, prefix, ref, i)
    assert_rel_close(score_fn(x, t), stored(ref, prefix + 'score', i), 1e-5, 'score')
    got = {'marginal_mean': mean, 'marginal_std': std, 'sde_drift': drift, 'sde_diffusion': diffusion,
           'discretize_f': f, 'discretize_G': G}
    for probability_flow, tag in ((False, 'reverse_sde'), (True, 'reverse_pf')):
      rsde = sde.reverse(score_fn, probability_flow)
      got[f'{tag}_drift'], got[f'{tag}_diffusion'] = rsde.sde(x, t)
      got[f'{tag}_discretize_f'], got[f'{tag}_discretize_G'] = rsde.discretize(x, t)
    for key, value in got.items():
      # f - ½G²s nearly cancels for the probability flow near the data: measure the error
      # on the scale of the terms that cancel, as float32 rounding of f alone sets it.
      expected = stored(ref, prefix + key, i)
      scale = max(np.abs(f).max(), np.abs(expected).max()) if key == 'reverse_pf_discretize_f' else None
      assert_rel_close(value, expected, 1e-4, f'{prefix}{key} t={t}', scale)


@pytest.mark.parametrize('name', list(SDES))
def test_prior_logp_matches_official(ref, name):
  sde = SDES[name]()
  assert_rel_close(sde.prior_logp(jnp.asarray(ref['z_prior'])), ref[f'{name}/prior_logp'], 1e-5, 'prior_logp')


def test_prior_logp_is_the_gaussian_density_of_the_prior_samples():
  from scipy import stats
  import jax
  for sde, scale in ((SDES['vesde'](), 50.), (SDES['vpsde'](), 1.)):
    z = sde.prior_sampling(jax.random.PRNGKey(0), (4000, 3))
    assert abs(float(jnp.std(z)) / scale - 1) < 0.03
    expected = stats.norm(0, scale).logpdf(np.asarray(z)).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)


def test_marginals_solve_the_forward_sde():
  """Mean and variance ODEs of a linear SDE: dm/dt = -½β m, dv/dt = -β v + g² (checked by finite differences)."""
  t, h = jnp.linspace(0.05, 0.95, 7), 1e-3
  for sde in (SDES['vpsde'](), SDES['subvpsde']()):
    def mean_var(t):
      mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
      return mean[:, 0], std ** 2
    (m1, v1), (m0, v0) = mean_var(t + h), mean_var(t - h)
    m, v = mean_var(t)
    _, g = sde.sde(jnp.ones((t.shape[0], 1)), t)
    beta = sde.beta(t)
    np.testing.assert_allclose((m1 - m0) / (2 * h), -0.5 * beta * m, rtol=2e-3)
    np.testing.assert_allclose((v1 - v0) / (2 * h), -beta * v + g ** 2, rtol=2e-2, atol=1e-3)
  ve = SDES['vesde']()
  _, g = ve.sde(jnp.ones((7, 1)), t)
  dvar = (ve.sigma(t + h) ** 2 - ve.sigma(t - h) ** 2) / (2 * h)
  np.testing.assert_allclose(dvar, g ** 2, rtol=1e-3)


def test_get_sde_rejects_unknown_names():
  import ml_collections
  config = ml_collections.ConfigDict({'training': {'sde': 'cosine'}, 'model': {}})
  with pytest.raises(ValueError, match=r"training.sde='cosine' is unknown; known: \[.*'vesde'.*\]"):
    sde_lib.get_sde(config)


# ---------------------------------------------------------------- the Gaussian kernel x_t = α x_0 + σ z

def kernel_float64(name, t):
  """α, σ in float64 from the notes' table."""
  if name == 'vesde':
    return np.ones_like(t), 0.01 * (50. / 0.01) ** t
  alpha = np.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1)
  return alpha, (np.sqrt(1. - alpha ** 2) if name == 'vpsde' else 1. - alpha ** 2)


@pytest.mark.parametrize('name', list(SDES))
def test_marginal_coeffs_and_log_snr_match_the_notes(name):
  sde = SDES[name]()
  t = np.concatenate([[1e-5, 1e-3], np.linspace(0.01, 1., 100)])
  alpha, sigma = kernel_float64(name, t)
  got_alpha, got_sigma = sde.marginal_coeffs(jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(got_alpha, alpha, rtol=1e-5)
  np.testing.assert_allclose(got_sigma, sigma, rtol=1e-4)
  np.testing.assert_allclose(sde.log_snr(jnp.asarray(t, jnp.float32)), np.log(alpha / sigma), atol=2e-5, rtol=1e-4)
  # The same kernel as the official marginal_prob (whose float32 sqrt(1 - α²) cancels near t = 0: 0.7% at 1e-5).
  mean, std = sde.marginal_prob(jnp.ones((len(t), 1)), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(mean[:, 0], got_alpha, rtol=1e-6)
  np.testing.assert_allclose(std, got_sigma, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', list(SDES))
def test_t_from_log_snr_inverts_log_snr_in_closed_form(name):
  """t(λ) at float64 log-SNRs over the whole range, including sub-VP near T where the naive form cancels."""
  sde = SDES[name]()
  t = np.concatenate([[1e-5, 1e-3], np.linspace(0.01, 1., 100)])
  alpha, sigma = kernel_float64(name, t)
  got = sde.t_from_log_snr(jnp.asarray(np.log(alpha / sigma), jnp.float32))
  np.testing.assert_allclose(got, t, rtol=2e-4, atol=1e-7)  # atol: λ ~ 4.6 itself rounds in float32


def test_each_sde_tells_its_discrete_chain():
  ve, vp, subvp = SDES['vesde'](), SDES['vpsde'](), SDES['subvpsde']()
  assert (ve.default_sampling_eps, vp.default_sampling_eps, subvp.default_sampling_eps) == (1e-5, 1e-3, 1e-3)
  assert ve.has_ancestral_chain and vp.has_ancestral_chain and not subvp.has_ancestral_chain
  t = jnp.full((2,), 0.5)
  np.testing.assert_array_equal(ve.langevin_alpha(t), 1.)
  np.testing.assert_allclose(vp.langevin_alpha(t), 1. - vp.discrete_betas[499])
  with pytest.raises(NotImplementedError):
    subvp.ancestral_step(jnp.ones((2, 1)), t, jnp.ones((2, 1)))
