"""One predictor or corrector step against the official code, with its stored Gaussian draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from helpers import PAPER_SDES as SDES, StoredNoise, analytic_score, assert_rel_close, load_reference, stored, time_cases

PREDICTORS = {  # fixture name -> (our predictor, probability_flow)
    'euler_maruyama': ('euler_maruyama', False),
    'reverse_diffusion': ('reverse_diffusion', False),
    'reverse_diffusion_pf': ('reverse_diffusion', True),
    'ancestral_sampling': ('ancestral_sampling', False),
}
CORRECTORS = {f'{name}_n{n}': (name, n) for name in ('langevin', 'ald') for n in (1, 2)}


@pytest.fixture(scope='module')
def ref():
  return load_reference('sde_steps')


@pytest.fixture
def stored_noise(ref):
  """The steps' `randn_like`: the k-th draw of a step is noise[k], as in the fixtures."""
  return StoredNoise(ref['noise'])


def _check(ref, key_prefix, i, x, x_mean, noise, what):
  assert_rel_close(x, stored(ref, key_prefix + '_x', i), 1e-4, what + ' x')
  assert_rel_close(x_mean, stored(ref, key_prefix + '_x_mean', i), 1e-4, what + ' x_mean')
  assert noise.count == int(stored(ref, key_prefix + '_noise_calls', i)), what + ' number of draws'


@pytest.mark.parametrize('name', list(SDES))
@pytest.mark.parametrize('fixture_name', list(PREDICTORS))
def test_predictor_step_matches_official(ref, stored_noise, name, fixture_name):
  sde = SDES[name]()
  predictor, probability_flow = PREDICTORS[fixture_name]
  if f'{name}/pred_{fixture_name}_x' not in ref:
    pytest.skip(f'the official code cannot run {fixture_name} on {name} (see the next tests)')
  fn = sampling.PREDICTORS.get(predictor)
  for t, prefix, i in time_cases(ref, name):
    stored_noise.count = 0
    x, x_mean = fn(sde, analytic_score(sde, prefix, ref, i), jax.random.PRNGKey(0), jnp.asarray(ref['x']), t,
                   probability_flow, stored_noise)
    _check(ref, f'{prefix}pred_{fixture_name}', i, x, x_mean, stored_noise, f'{prefix}{fixture_name}')


@pytest.mark.parametrize('name', ['vesde', 'vpsde'])
@pytest.mark.parametrize('fixture_name', list(CORRECTORS))
def test_corrector_step_matches_official(ref, stored_noise, name, fixture_name):
  sde = SDES[name]()
  corrector, n_steps = CORRECTORS[fixture_name]
  fn = sampling.CORRECTORS.get(corrector)
  for t, prefix, i in time_cases(ref, name):
    stored_noise.count = 0
    x, x_mean = fn(sde, analytic_score(sde, prefix, ref, i), jax.random.PRNGKey(0), jnp.asarray(ref['x']), t,
                   0.16, n_steps, stored_noise)
    _check(ref, f'{prefix}corr_{fixture_name}', i, x, x_mean, stored_noise, f'{prefix}{fixture_name}')


@pytest.mark.parametrize('name', list(SDES))
def test_euler_maruyama_probability_flow_is_a_deterministic_euler_step(ref, name):
  """The official predictor crashes here; ours takes x - f̃ Δt with the official probability-flow drift f̃."""
  sde = SDES[name]()
  fn = sampling.PREDICTORS.get('euler_maruyama')
  for t, prefix, i in time_cases(ref, name):
    x, x_mean = fn(sde, analytic_score(sde, prefix, ref, i), jax.random.PRNGKey(0), jnp.asarray(ref['x']), t, True)
    expected = ref['x'] + stored(ref, prefix + 'reverse_pf_drift', i) * (-1. / sde.N)
    np.testing.assert_array_equal(x, x_mean)
    assert_rel_close(x, expected, 1e-5, 'euler_maruyama pf')


def test_ancestral_sampling_on_subvp_is_refused_with_a_clear_error():
  with pytest.raises(ValueError, match='ancestral_sampling is defined for VESDE and VPSDE'):
    sampling.get_pc_sampler(SDES['subvpsde'](), (2, 2), predictor='ancestral_sampling')


def test_unknown_predictor_and_corrector_names_list_the_known_ones():
  with pytest.raises(ValueError, match=r"sampling.predictor='heun' is unknown.*euler_maruyama"):
    sampling.get_pc_sampler(SDES['vpsde'](), (2, 2), predictor='heun')
  with pytest.raises(ValueError, match=r"sampling.corrector='mala' is unknown.*langevin"):
    sampling.get_pc_sampler(SDES['vpsde'](), (2, 2), corrector='mala')
