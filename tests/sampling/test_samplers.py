"""The sampler registry and the few-step samplers (DDIM, DPM-Solver++, EDM Heun) on exact scores.

References are analytic: the probability-flow map of Gaussian data, written here in float64 from its
closed form, and the 2-D Gaussian mixture of toy.py.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import config_table, sampling, sde_lib, toy
from helpers import MIXTURE, N_SAMPLES, PAPER_SDES

M, S = 0.5, 0.2                # data N(M, S²) per coordinate
BATCH = (64, 2)
STEPS = (10, 20, 40, 80)
BETA_MIN, BETA_MAX, SIGMA_MIN, SIGMA_MAX = 0.1, 20., 0.01, 50.


# ---------------------------------------------------------------- analytic references (float64)

def alpha_sigma(name, t):
  """α(t), σ(t) of the notes' table, in float64."""
  t = np.float64(t)
  if name == 'vesde':
    return 1., SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
  alpha = np.exp(-0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN)
  return alpha, (np.sqrt(1. - alpha ** 2) if name == 'vpsde' else 1. - alpha ** 2)


def exact_flow_map(name, z, eps):
  """x_eps = α_eps m + sqrt(α_eps² s² + σ_eps²) (x_T - α_T m) / sqrt(α_T² s² + σ_T²)."""
  (a_T, s_T), (a_e, s_e) = alpha_sigma(name, 1.), alpha_sigma(name, eps)
  return a_e * M + np.sqrt(a_e ** 2 * S ** 2 + s_e ** 2) * (z - a_T * M) / np.sqrt(a_T ** 2 * S ** 2 + s_T ** 2)


def gaussian_score(sde):
  """Exact score of N(M, S²) data, from the official marginal_prob (checked against the official code)."""
  def score_fn(x, t):
    mean, std = sde.marginal_prob(jnp.ones_like(x), t)
    return -(x - mean * M) / (mean ** 2 * S ** 2 + sde_lib.batch_mul(std ** 2, jnp.ones_like(x)))
  return score_fn


# ---------------------------------------------------------------- convergence on the exact flow map

SAMPLERS = {  # label -> (registry name, options)
    'ddim': ('ddim', {}),
    'dpm_solver++(2M)': ('dpm_solver++', {'order': 2}),
    'dpm_solver++(3M)': ('dpm_solver++', {'order': 3}),
    'edm_heun': ('edm_heun', {}),
}


def flow_map_errors(sde_name, label, score_scale=1., steps=STEPS):
  """Max |x - exact map| over the batch, per number of steps, from one shared latent z."""
  sde = PAPER_SDES[sde_name]()
  eps = sde.default_sampling_eps
  z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(0), BATCH), np.float64)
  reference = exact_flow_map(sde_name, z, eps)
  score = gaussian_score(sde)
  name, options = SAMPLERS[label]
  errors = []
  for n in steps:
    sampler = sampling.get_sampler(name, sde, BATCH, num_steps=n, denoise=False, **options)
    x, _ = sampler(jax.random.PRNGKey(1), lambda x, t: score_scale * score(x, t), z=jnp.asarray(z, jnp.float32))
    errors.append(float(np.abs(np.asarray(x, np.float64) - reference).max()))
  return np.asarray(errors)


def ratios(errors):
  return errors[:-1] / errors[1:]


@pytest.fixture(scope='module')
def errors():
  """Every (SDE, sampler) error curve, computed once; printed for the record (pytest -s)."""
  table = {(sde, label): flow_map_errors(sde, label) for sde in PAPER_SDES for label in SAMPLERS
           if label != 'dpm_solver++(3M)'}
  table['vpsde', 'dpm_solver++(3M)'] = flow_map_errors('vpsde', 'dpm_solver++(3M)', steps=STEPS[1:])
  for (sde, label), e in table.items():
    print(f'{sde:9s} {label:17s} errors ' + ' '.join(f'{v:.2e}' for v in e)
          + ' ratios ' + ' '.join(f'{v:.2f}' for v in ratios(e)))
  return table


@pytest.mark.parametrize('sde', list(PAPER_SDES))
def test_ddim_is_first_order(errors, sde):
  r = ratios(errors[sde, 'ddim'])
  assert np.all((1.7 <= r) & (r <= 2.3)), r


@pytest.mark.parametrize('sde', list(PAPER_SDES))
def test_dpm_solver_2m_is_second_order(errors, sde):
  """Second order from 20 steps on; at 10 → 20 the 10-step error sits on a pre-asymptotic hump (see the note)."""
  e = errors[sde, 'dpm_solver++(2M)']
  assert e[1] < e[0]
  assert np.all(ratios(e)[1:] >= 3.3), ratios(e)


@pytest.mark.parametrize('sde', list(PAPER_SDES))
def test_edm_heun_is_second_order(errors, sde):
  assert np.all(ratios(errors[sde, 'edm_heun']) >= 3.3), ratios(errors[sde, 'edm_heun'])


def test_dpm_solver_3m_converges_beyond_second_order(errors):
  """3M's second-difference term is what lifts it past 2M: halving it (a slip that is easy to make) leaves
  a ratio of ~4.5 at 40 -> 80 steps. Its error at 20, 40, 80 steps (VP; the other SDEs behave alike)."""
  e = errors['vpsde', 'dpm_solver++(3M)']
  assert np.all(ratios(e) >= 6.), ratios(e)
  assert e[-1] < errors['vpsde', 'dpm_solver++(2M)'][-1] / 10


def test_convergence_check_fails_on_a_wrong_score():
  """A score off by 2% stalls the error: the check above cannot pass by accident."""
  e = flow_map_errors('vpsde', 'dpm_solver++(2M)', score_scale=1.02, steps=(40, 80))
  assert ratios(e)[0] < 1.5, e


# ---------------------------------------------------------------- the mixture, against 1,000-step PC

# Sub-VP's λ runs from -5 to 9.2 (VP: -5 to 4.6), so uniform-λ steps are sparser where the mixture
# forms: at 20 steps component 0's mean is off by 0.26 of its std (bound 0.15); 40 steps pass.
MIXTURE_STEPS = {'vesde': 20, 'vpsde': 20, 'subvpsde': 40}


@pytest.mark.parametrize('sde_name', list(PAPER_SDES))
def test_dpm_solver_2m_at_20_steps_samples_the_mixture_as_well_as_pc(sde_name):
  sde = PAPER_SDES[sde_name]()
  score = MIXTURE.marginal_score(sde)
  steps = MIXTURE_STEPS[sde_name]
  dpm = sampling.get_sampler('dpm_solver++', sde, (N_SAMPLES, 2), num_steps=steps, order=2)
  samples, nfe = dpm(jax.random.PRNGKey(3), score)
  assert int(nfe) == steps + 1
  pc = sampling.get_sampler('pc', sde, (N_SAMPLES, 2), predictor='reverse_diffusion', corrector='none')
  pc_samples, _ = pc(jax.random.PRNGKey(3), score)
  report = toy.mixture_report(samples, MIXTURE, jax.random.PRNGKey(9))
  pc_report = toy.mixture_report(pc_samples, MIXTURE, jax.random.PRNGKey(9))
  print(f"{sde_name}: KS dpm_solver++(2M) {steps} steps {np.round(report['ks'], 4)}, "
        f"PC 1000 steps {np.round(pc_report['ks'], 4)}")
  assert not toy.mixture_failures(report), toy.mixture_failures(report)
  assert not toy.mixture_failures(pc_report), toy.mixture_failures(pc_report)
  # As well as PC: KS within the two-sample noise (~0.02 at 4,000 points) of PC's.
  assert max(report['ks']) <= max(pc_report['ks']) + 0.02


def test_stochastic_samplers_draw_the_gaussian_data():
  """DDIM with eta = 1 and EDM with churn are stochastic; on Gaussian data their samples tend to N(M, S²).
  Both are off at few steps (DDIM eta=1: std -9% at 50 steps, EDM churn 40: +9% at 25 levels)."""
  sde = PAPER_SDES['vpsde']()
  for name, options in (('ddim', {'eta': 1., 'num_steps': 200}),
                        ('edm_heun', {'s_churn': 40., 's_tmin': 0.05, 's_tmax': 50., 'num_steps': 100})):
    x, _ = sampling.get_sampler(name, sde, (20000, 1), **options)(jax.random.PRNGKey(4), gaussian_score(sde))
    assert abs(float(jnp.mean(x)) - M) < 0.01, name
    assert abs(float(jnp.std(x)) / S - 1) < 0.04, (name, float(jnp.std(x)))


# ---------------------------------------------------------------- nfe, z, shapes, options

NFE_CASES = [  # (name, options, denoise, expected nfe)
    ('ddim', {'num_steps': 4}, True, 5), ('ddim', {'num_steps': 4, 'eta': 0.5}, False, 4),
    ('dpm_solver++', {'num_steps': 5, 'order': 1}, False, 5), ('dpm_solver++', {'num_steps': 5, 'order': 3}, True, 6),
    ('edm_heun', {'num_steps': 4}, False, 6), ('edm_heun', {'num_steps': 4, 's_churn': 5.}, True, 7),
]


def test_nfe_counts_every_score_evaluation():
  """Counted on the host; also runs a rank-4 batch (any (batch, ...) shape works)."""
  calls = []
  sde = sde_lib.subVPSDE()
  exact = gaussian_score(sde)

  def counted_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  for name, options, denoise, nfe in NFE_CASES:
    calls.clear()
    x, reported = sampling.get_sampler(name, sde, (2, 3, 2, 1), denoise=denoise, **options)(
        jax.random.PRNGKey(0), counted_score)
    jax.block_until_ready(x)
    assert x.shape == (2, 3, 2, 1)
    assert int(reported) == len(calls) == nfe, (name, options, denoise)


def test_denoise_is_the_tweedie_step_at_eps():
  """denoise=True returns (x + σ² s(x, eps)) / α of the un-denoised result, from the same z."""
  sde = PAPER_SDES['vesde']()
  z = sde.prior_sampling(jax.random.PRNGKey(0), (8, 2))
  score = gaussian_score(sde)
  x, _ = sampling.get_sampler('dpm_solver++', sde, (8, 2), num_steps=6, denoise=False)(jax.random.PRNGKey(1), score, z)
  x0, _ = sampling.get_sampler('dpm_solver++', sde, (8, 2), num_steps=6)(jax.random.PRNGKey(1), score, z)
  eps = np.float64(1e-5)
  sigma2 = alpha_sigma('vesde', eps)[1] ** 2
  expected = np.asarray(x, np.float64) * S ** 2 / (S ** 2 + sigma2) + M * sigma2 / (S ** 2 + sigma2)
  np.testing.assert_allclose(x0, expected, atol=1e-5)


def test_eps_defaults_to_the_sdes_own():
  assert sde_lib.VESDE().default_sampling_eps == 1e-5
  assert sde_lib.VPSDE().default_sampling_eps == sde_lib.subVPSDE().default_sampling_eps == 1e-3
  sde = PAPER_SDES['vpsde']()
  z = sde.prior_sampling(jax.random.PRNGKey(0), BATCH)
  run = lambda **o: sampling.get_sampler('ddim', sde, BATCH, num_steps=3, **o)(jax.random.PRNGKey(1),
                                                                            gaussian_score(sde), z)[0]
  np.testing.assert_array_equal(run(), run(eps=1e-3))
  np.testing.assert_array_equal(run(), run(eps=0.))
  assert np.abs(run() - run(eps=1e-2)).max() > 1e-4


def _config(**sampling_fields):
  return ml_collections.ConfigDict({'sampling': {'method': 'pc', 'predictor': 'reverse_diffusion',
                                                 'corrector': 'none', 'noise_removal': True, **sampling_fields},
                                    'training': {'continuous': True}})


def test_get_sampling_fn_builds_every_sampler_from_config_sampling():
  sde = PAPER_SDES['vpsde']()
  z = sde.prior_sampling(jax.random.PRNGKey(0), (4, 2))
  score = gaussian_score(sde)
  config = _config(method='DPM_Solver++', num_steps=5, order=3, noise_removal=False)
  x, nfe = sampling.get_sampling_fn(config, sde, (4, 2))(jax.random.PRNGKey(1), score, z)
  y, _ = sampling.get_sampler('dpm_solver++', sde, (4, 2), num_steps=5, order=3, denoise=False)(
      jax.random.PRNGKey(1), score, z)
  np.testing.assert_array_equal(x, y)
  assert int(nfe) == 5
  # Fields the config lacks take the one table default (num_steps 20, noise_removal -> denoise).
  for method, nfe in (('ddim', 21), ('edm_heun', 39), ('dpm_solver++', 21)):
    config = _config(method=method)
    assert int(sampling.get_sampling_fn(config, sde, (4, 2))(jax.random.PRNGKey(1), score, z)[1]) == nfe
  # PC: steps from the SDE, official denoise; the inverse scaler applies.
  pc = sampling.get_sampling_fn(_config(), sde_lib.VPSDE(N=7), (4, 2), inverse_scaler=lambda x: 2 * x)
  assert int(pc(jax.random.PRNGKey(1), score)[1]) == 7


@pytest.fixture
def unregister_probe():
  yield
  sampling.SAMPLERS.unregister('probe')


def test_registered_sampler_builds_from_its_config_fields(unregister_probe):
  seen = {}

  @sampling.register_sampler('probe')
  def probe(sde, shape, num_steps=3, eta=0., denoise=False, eps=None, inverse_scaler=None, sharding=None):
    seen.update(num_steps=num_steps, eta=eta, denoise=denoise, eps=eps)
    return 'sampler'

  assert 'probe' in sampling.sampler_names()
  assert config_table.FIELDS['sampling.method'].domain('probe') is None
  assert sampling.get_sampling_fn(_config(method='probe', num_steps=9, eta=0.5), sde_lib.VPSDE(), (1, 2)) == 'sampler'
  assert seen == {'num_steps': 9, 'eta': 0.5, 'denoise': True, 'eps': 0.}


def test_method_domain_lists_the_registry():
  domain = config_table.FIELDS['sampling.method'].domain
  for name in ('pc', 'ode', 'ddim', 'dpm_solver++', 'edm_heun'):
    assert domain(name) is None
  assert 'dpm_solver++' in domain('dpm_solver')


class NoKernelSDE(sde_lib.SDE):
  """An SDE that does not tell its Gaussian kernel."""
  T = 1.
  sde = marginal_prob = prior_sampling = prior_logp = lambda self, *args: None


@pytest.mark.parametrize('call, message', [
    (lambda: sampling.get_sampler('heun', sde_lib.VPSDE(), BATCH), r"sampling.method='heun' is unknown.*ddim"),
    (lambda: sampling.get_sampler('dpm_solver++', sde_lib.VPSDE(), BATCH, order=4), r'sampling.order=4.*1, 2 or 3'),
    (lambda: sampling.get_sampler('edm_heun', sde_lib.VPSDE(), BATCH, num_steps=1), r'sampling.num_steps=1.*>= 2'),
    (lambda: sampling.get_sampler('ddim', sde_lib.VPSDE(), BATCH, eta=2.), r'sampling.eta=2.0'),
    (lambda: sampling.get_sampler('ddim', sde_lib.VPSDE(), BATCH, skip_type='quad'), r"sampling.skip_type='quad'"),
    (lambda: sampling.get_sampler('ddim', NoKernelSDE(10), BATCH),
     r"sampling.method='ddim' cannot serve NoKernelSDE.*marginal_coeffs.*'pc' or 'ode'"),
    (lambda: sampling.get_sampler('pc', sde_lib.subVPSDE(), BATCH, predictor='ancestral_sampling'),
     r'ancestral_sampling is defined for VESDE and VPSDE only, not subVPSDE'),
])
def test_bad_options_raise_one_line_value_errors(call, message):
  with pytest.raises(ValueError, match=message) as info:
    call()
  assert '\n' not in str(info.value)


def test_a_sharded_batch_gives_the_same_samples():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), PartitionSpec('data'))
  sde = PAPER_SDES['vesde']()
  shape = (2 * jax.device_count(), 2)
  plain = sampling.get_sampler('edm_heun', sde, shape, num_steps=3)
  sharded = sampling.get_sampler('edm_heun', sde, shape, num_steps=3, sharding=sharding)
  a, _ = plain(jax.random.PRNGKey(0), gaussian_score(sde))
  b, _ = sharded(jax.random.PRNGKey(0), gaussian_score(sde))
  np.testing.assert_allclose(a, b, rtol=1e-6)
