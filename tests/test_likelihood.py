"""Likelihood and ODE sampler against the official numbers (sde_likelihood.npz) and the exact mixture density."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import likelihood, sampling, sde_lib
from helpers import MIXTURE, PAPER_SDES, load_reference

SCALERS = {'vesde': lambda x: x, 'vpsde': lambda x: (x + 1.) / 2., 'subvpsde': lambda x: (x + 1.) / 2.}


def gaussian_score(sde):
  """Exact score of data N(0.5, 0.2²) per pixel (the fixtures' analytic score)."""
  def score_fn(x, t):
    if isinstance(sde, sde_lib.VESDE):
      a, noise_var = jnp.ones_like(t), sde.sigma(t) ** 2
    else:
      a = jnp.exp(sde.log_mean_coeff(t))
      noise_var = 1 - a ** 2 if isinstance(sde, sde_lib.VPSDE) else (1 - a ** 2) ** 2
    m, s2 = 0.5 * a, 0.04 * a ** 2 + noise_var
    return -(x - m[:, None, None, None]) / s2[:, None, None, None]
  return score_fn


def fixture_sde(name):
  return {'vesde': sde_lib.VESDE(0.01, 50., 1000), 'vpsde': sde_lib.VPSDE(0.1, 20., 1000),
          'subvpsde': sde_lib.subVPSDE(0.1, 20., 1000)}[name]


@pytest.fixture(scope='module')
def ref():
  return load_reference('sde_likelihood')


@pytest.mark.parametrize('name', ['vesde', 'vpsde', 'subvpsde'])
@pytest.mark.parametrize('probe', ['rademacher', 'gaussian'])
def test_bpd_matches_official_with_stored_probes(ref, name, probe):
  sde = fixture_sde(name)
  likelihood_fn = likelihood.get_likelihood_fn(sde, SCALERS[name], probe, rtol=1e-5, atol=1e-5, eps=1e-5)
  bpd, z, nfe = likelihood_fn(jax.random.PRNGKey(0), gaussian_score(sde), jnp.asarray(ref['lik/data']),
                              probe=jnp.asarray(ref[f'lik/hutchinson_{probe}_eps']))
  np.testing.assert_allclose(bpd, ref[f'lik/{name}/{probe}/bpd_official'], atol=1e-3)
  np.testing.assert_allclose(bpd, ref[f'lik/{name}/bpd_exact_official_procedure_{probe}'], atol=1e-3)
  # z against the exact affine flow, relative to its scale (VE latents reach ±120; the
  # official solver's own error there is 4.4e-3).
  z_exact = ref[f'lik/{name}/z_exact']
  np.testing.assert_allclose(z, z_exact, atol=1e-4 * np.abs(z_exact).max())
  assert 0 < int(nfe) < 4 * int(ref[f'lik/{name}/{probe}/nfe'])


@pytest.mark.parametrize('name', ['vesde', 'vpsde', 'subvpsde'])
def test_ode_sampler_matches_official_from_stored_latents(ref, name):
  sde = fixture_sde(name)
  for denoise in ('nodenoise', 'denoise'):
    sampler = sampling.get_ode_sampler(sde, ref['ode/z_standard_normal'].shape, SCALERS[name],
                                       denoise=denoise == 'denoise', rtol=1e-5, atol=1e-5, eps=1e-3)
    x, _ = sampler(jax.random.PRNGKey(0), gaussian_score(sde), z=jnp.asarray(ref[f'ode/{name}/z']))
    np.testing.assert_allclose(x, ref[f'ode/{name}/{denoise}/sample'], atol=1e-4)
  np.testing.assert_allclose(ref[f'ode/{name}/nodenoise/sample'], ref[f'ode/{name}/nodenoise/sample_exact_flow'],
                             atol=1e-4)


def test_8bit_offset_follows_the_inverse_scaler():
  assert likelihood.bits_per_dim_offset(lambda x: x) == 8.
  assert likelihood.bits_per_dim_offset(lambda x: (x + 1.) / 2.) == 7.


@pytest.mark.parametrize('name', list(PAPER_SDES))
def test_exact_divergence_likelihood_matches_the_mixture_density(name):
  """bpd = -(log q_eps(x) + prior_logp(z) - log q_T(z)) / (D ln 2) for the exact score and exact divergence."""
  sde = PAPER_SDES[name]()
  x = MIXTURE.sample(jax.random.PRNGKey(3), 256)
  eps = 1e-5
  likelihood_fn = likelihood.get_likelihood_fn(sde, hutchinson_type='exact', rtol=1e-5, atol=1e-5, eps=eps)
  bpd, z, _ = likelihood_fn(jax.random.PRNGKey(0), MIXTURE.marginal_score(sde), x)
  n = x.shape[0]
  log_q_eps = MIXTURE.marginal_log_prob(sde, x, jnp.full((n,), eps))
  log_q_T = MIXTURE.marginal_log_prob(sde, z, jnp.full((n,), sde.T))
  expected = -(log_q_eps + sde.prior_logp(z) - log_q_T) / (2 * np.log(2))
  np.testing.assert_allclose(bpd, expected, atol=0.01)


def test_hutchinson_estimates_are_unbiased_for_the_mixture():
  """Averaged over probes, Rademacher and Gaussian bpd agree with the exact divergence."""
  sde = PAPER_SDES['vpsde']()
  x = jnp.repeat(MIXTURE.sample(jax.random.PRNGKey(4), 4), 64, axis=0)
  exact, _, _ = likelihood.get_likelihood_fn(sde, hutchinson_type='exact', rtol=1e-4, atol=1e-4)(
      jax.random.PRNGKey(0), MIXTURE.marginal_score(sde), x)
  for probe in ('rademacher', 'gaussian'):
    bpd, _, _ = likelihood.get_likelihood_fn(sde, hutchinson_type=probe, rtol=1e-4, atol=1e-4)(
        jax.random.PRNGKey(5), MIXTURE.marginal_score(sde), x)
    per_point = bpd.reshape(4, 64).mean(1)
    np.testing.assert_allclose(per_point, exact.reshape(4, 64)[:, 0], atol=0.1)
    assert float(jnp.std(bpd.reshape(4, 64), axis=1).max()) > 1e-3  # a real estimator, not the exact trace


def test_unknown_hutchinson_type_is_refused():
  with pytest.raises(ValueError, match="Unknown hutchinson_type 'laplace'"):
    likelihood.get_likelihood_fn(fixture_sde('vpsde'), hutchinson_type='laplace')
