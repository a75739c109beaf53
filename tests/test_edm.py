"""EDM training inside the SDE framework, against exact references.

- On Gaussian data N(0, σ_d² I) the ideal EDM network is F ≡ 0. The wrapped score is then the exact score,
  the samplers follow the exact flow map, and the EDM loss is exactly 1 per dimension.
- The coefficients match Table 1 of Karras et al. (2022).
- EDM's VP and VE wrappers reproduce today's 'score' parametrization on the same weights.
- ln σ̃ follows the truncated normal (KS test), and bad combinations raise one-line errors.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from helpers import PAPER_SDES, REPO
from score_sde import config_table, losses, models, sampling, sde_lib
from score_sde.models import preconditioning

SIGMA_DATA = 0.7  # not EDM's 0.5, so that a wrapper that ignores σ_d fails
SDES = {**{name: make() for name, make in PAPER_SDES.items()}, 'edm': sde_lib.EDMSDE(0.002, 80.)}
SIGMAS = np.array([0.002, 0.02, 0.3, 0.7, 1., 4., 30., 80.])  # σ̃ spanning EDM's range


def model_config(name='mlp', embedding_type='fourier', parametrization='edm', sigma_data=SIGMA_DATA):
  return ml_collections.ConfigDict({'model': {'name': name, 'embedding_type': embedding_type,
                                              'parametrization': parametrization, 'sigma_data': sigma_data}})


class ZeroNetwork:
  """F ≡ 0, the ideal EDM network for data N(0, σ_d² I); records what the wrapper feeds it."""

  def __init__(self, config):
    self.config = config
    self.inputs = []

  def apply(self, variables, x, noise, train=False, rngs=None):
    self.inputs.append((x, noise))
    return jnp.zeros_like(x)


def gaussian_score(sde, x, t):
  """Exact score of N(0, σ_d² I) after the kernel: -x / (α² σ_d² + σ²)."""
  alpha, sigma = sde.marginal_coeffs(t)
  return -x / (alpha ** 2 * SIGMA_DATA ** 2 + sigma ** 2)[:, None]


def max_rel(actual, expected):
  """max |actual - expected| / max |expected| (the absolute error where expected is all zero)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1.) if not expected.any()
               else np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------- the ideal wrapper on Gaussian data

@pytest.mark.parametrize('name', list(SDES))
def test_ideal_wrapper_is_the_exact_score_at_every_t(name):
  sde = SDES[name]
  score_fn = models.get_score_fn(sde, ZeroNetwork(model_config()), {}, continuous=True)
  eps = 1e-5
  t = jnp.asarray(np.concatenate([[eps], np.geomspace(eps, sde.T, 41)[1:-1], [sde.T]]), jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(0), (t.shape[0], 6)) * 3.
  for i in range(t.shape[0]):  # per t, so a small score next to a large one cannot hide
    assert max_rel(score_fn(x[i:i + 1], t[i:i + 1]), gaussian_score(sde, x[i:i + 1], t[i:i + 1])) < 2e-6, float(t[i])
  # The denoiser is the exact posterior mean E[x_0 | x_t] = α σ_d² x / (α² σ_d² + σ²).
  alpha, sigma = sde.marginal_coeffs(t)
  posterior_mean = (alpha * SIGMA_DATA ** 2 / (alpha ** 2 * SIGMA_DATA ** 2 + sigma ** 2))[:, None] * x
  assert max_rel(score_fn.denoise(x, t), posterior_mean) < 2e-6


@pytest.mark.parametrize('name, method, num_steps', [('edm', 'edm_heun', 18), ('vpsde', 'dpm_solver++', 18)])
def test_samplers_follow_the_exact_flow_map_of_the_gaussian(name, method, num_steps):
  """x_eps = sqrt(α_eps² σ_d² + σ_eps²) / sqrt(α_T² σ_d² + σ_T²) · x_T, the flow map of Gaussian data.

  With the exact score the only error left is the solver's: second order, so doubling the steps cuts it ~4x
  (measured 4.5 for Heun, 3.6 for DPM-Solver++(2M); 5% and 1.6% at 18 steps, 1.1% and 0.4% at 36).
  """
  sde = SDES[name]
  score_fn = models.get_score_fn(sde, ZeroNetwork(model_config()), {}, continuous=True)
  shape = (2000, 4)
  eps = sde.default_sampling_eps
  (a_e, s_e), (a_T, s_T) = [sde.marginal_coeffs(jnp.asarray([t], jnp.float32)) for t in (eps, sde.T)]
  std_eps, std_T = [float(jnp.sqrt(a ** 2 * SIGMA_DATA ** 2 + s ** 2)[0]) for a, s in ((a_e, s_e), (a_T, s_T))]
  z = std_T * jax.random.normal(jax.random.PRNGKey(1), shape)  # the marginal at T
  errors = []
  for steps in (num_steps, 2 * num_steps):
    x, _ = sampling.get_sampler(method, sde, shape, denoise=False, num_steps=steps)(jax.random.PRNGKey(3), score_fn,
                                                                                     z=z)
    errors.append(max_rel(x, z * std_eps / std_T))
  assert errors[1] < 0.015 and errors[0] / errors[1] > 3.3, errors
  # So the samples are N(0, α_eps² σ_d² + σ_eps²) ≈ N(0, σ_d²), up to 4 standard errors and the solver's error.
  assert abs(float(jnp.std(x)) / std_eps - 1.) < 4 / math.sqrt(2 * x.size) + errors[1]
  assert abs(std_eps / SIGMA_DATA - 1.) < 0.01


# ---------------------------------------------------------------- the EDM loss

def whitened(shape, rng):
  """x_0 ~ σ_d e and z with exactly the Gaussian second moments per dimension: mean(e²) = mean(z²) = 1,
  mean(e z) = 0 over the batch. The loss is quadratic in (x_0, z), so its batch mean is its expectation."""
  e, z = jax.random.normal(rng, (2,) + shape)
  e, z = e - e.mean(0), z - z.mean(0)
  e = e / jnp.sqrt((e ** 2).mean(0))
  z = z - (e * z).mean(0) * e
  z = z / jnp.sqrt((z ** 2).mean(0))
  return SIGMA_DATA * e, z


@pytest.mark.parametrize('name', ['vesde', 'vpsde', 'edm'])
def test_edm_loss_of_the_ideal_network_is_one_per_dimension(name):
  sde = SDES[name]
  score_fn = models.get_score_fn(sde, ZeroNetwork(model_config()), {}, continuous=True)
  data, z = whitened((64, 5), jax.random.PRNGKey(4))
  for sigma in [0.02, 0.3, 0.7, 4., 30.]:
    t = jnp.full((64,), sde.t_from_log_snr(-jnp.log(jnp.float32(sigma))))
    per_example = losses.edm_losses(score_fn, sde, data, t, z, SIGMA_DATA, reduce_mean=True)
    assert abs(float(per_example.mean()) - 1.) < 2e-5, sigma
  # A wrong σ_d in the weight breaks it.
  wrong = losses.edm_losses(score_fn, sde, data, t, z, 0.5, reduce_mean=True)
  assert abs(float(wrong.mean()) - 1.) > 0.1


def test_edm_loss_fn_draws_and_weights_as_edm():
  """End to end (sampled σ̃, noise, weights): mean 1 within 5 standard errors of chi-square noise."""
  sde = SDES['vpsde']
  loss_fn = losses.get_loss_fn(sde, ZeroNetwork(model_config()), train=False, reduce_mean=True, loss='edm')
  batch = {'image': SIGMA_DATA * jax.random.normal(jax.random.PRNGKey(5), (8192, 16))}
  standard_error = math.sqrt(2. / 16 / 8192)
  assert abs(float(jax.jit(loss_fn)(jax.random.PRNGKey(6), {}, batch)) - 1.) < 5 * standard_error


# ---------------------------------------------------------------- Table 1

def test_coefficients_match_table_1():
  s, sd = SIGMAS.astype(np.float64), SIGMA_DATA
  edm = preconditioning.edm(jnp.asarray(s, jnp.float32), sd)
  expected = [sd ** 2 / (s ** 2 + sd ** 2), s * sd / np.sqrt(s ** 2 + sd ** 2), 1 / np.sqrt(sd ** 2 + s ** 2),
              np.log(s) / 4, s ** 2 / (s ** 2 + sd ** 2)]
  for got, want, what in zip(edm, expected, edm._fields):
    assert max_rel(got, want) < 1e-6, what
  # EDM's design rules: unit-variance input and effective target, with c_skip minimising c_out.
  np.testing.assert_allclose(np.asarray(edm.c_in) ** 2 * (s ** 2 + sd ** 2), 1., rtol=1e-6)
  np.testing.assert_allclose((1 - np.asarray(edm.c_skip)) ** 2 * sd ** 2 + np.asarray(edm.c_skip) ** 2 * s ** 2,
                             np.asarray(edm.c_out) ** 2, rtol=1e-5)
  np.testing.assert_allclose(preconditioning.edm_loss_weight(s, sd), 1 / np.asarray(edm.c_out, np.float64) ** 2,
                             rtol=1e-5)

  beta_d, beta_min = 19.9, 0.1
  vp = preconditioning.vp(jnp.asarray(s, jnp.float32))
  t_vp = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(s ** 2)) - beta_min) / beta_d
  for got, want, what in zip(vp, [np.ones_like(s), -s, 1 / np.sqrt(s ** 2 + 1), 999 * t_vp, 0 * s], vp._fields):
    assert max_rel(got, want) < 1e-6, what
  # σ_VP(t) = sqrt(exp(½ β_d t² + β_min t) - 1) is our VP SDE's σ/α, so c_noise = 999 t of that SDE.
  np.testing.assert_allclose(np.sqrt(np.expm1(0.5 * beta_d * t_vp ** 2 + beta_min * t_vp)), s, rtol=1e-10)
  t_ours = SDES['vpsde'].t_from_log_snr(-jnp.log(jnp.asarray(s, jnp.float32)))
  np.testing.assert_allclose(vp.c_noise, 999 * np.asarray(t_ours), rtol=2e-5)

  ve = preconditioning.ve(jnp.asarray(s, jnp.float32))
  for got, want, what in zip(ve, [np.ones_like(s), s, np.ones_like(s), np.log(s / 2), 0 * s], ve._fields):
    assert max_rel(got, want) < 1e-6, what


def test_edm_noise_input_in_each_networks_convention():
  """c_noise = ¼ ln σ̃ as σ̃^{1/4} for networks that embed its log, as itself for positional ones; input c_in x̃."""
  sde = SDES['vpsde']
  t = jnp.asarray([1e-3, 0.2, 0.9])
  x = jax.random.normal(jax.random.PRNGKey(7), (3, 5))
  alpha, sigma = sde.marginal_coeffs(t)
  s = np.asarray(sigma / alpha, np.float64)
  cases = [('ncsnpp', 'fourier', s ** 0.25), ('mlp', 'fourier', s ** 0.25), ('ncsnpp', 'positional', np.log(s) / 4),
           ('mlp', 'positional', np.log(s) / 4), ('ddpm', 'positional', np.log(s) / 4),
           ('ncsnv2_64', 'fourier', np.log(s) / 4)]
  for name, embedding, expected in cases:
    network = ZeroNetwork(model_config(name, embedding))
    models.get_score_fn(sde, network, {}, continuous=True)(x, t)
    network_x, noise = network.inputs[-1]
    assert max_rel(noise, expected) < 1e-5, (name, embedding)
    c_in_x_tilde = x / (np.asarray(alpha)[:, None] * np.sqrt(s ** 2 + SIGMA_DATA ** 2)[:, None])
    assert max_rel(network_x, c_in_x_tilde) < 1e-5, name


# ---------------------------------------------------------------- VP and VE wrappers = today's networks

@pytest.fixture(scope='module')
def tiny_ncsnpp():
  """Tiny DDPM++ (positional) and NCSN++ (Fourier) configs, each with random weights everywhere.

  The weights are drawn for the shapes jax.eval_shape gives, with no init. (An init would run eagerly, and
  init_scale 0 would make every output ~0.)
  """
  base = config_table.load(str(REPO / 'configs' / 'quickstart.py'))
  m = base.model
  m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout = 16, (1,), 1, (), 0.
  x = jax.random.normal(jax.random.PRNGKey(8), (4, 8, 8, 1))
  nets = {}
  for kind, embedding in (('vp', 'positional'), ('ve', 'fourier')):
    config = ml_collections.ConfigDict(base.to_dict())
    config.model.embedding_type = embedding
    model = models.get_model(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(9), x, jnp.ones((4,)), train=False))['params']
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(10)  # numpy: one jax.random kernel per leaf shape would compile for seconds
    params = tree.unflatten([jnp.asarray(0.3 * rng.standard_normal(p.shape), jnp.float32) for p in leaves])
    nets[kind] = config, {'params': params}
  return nets, x


@pytest.mark.parametrize('kind', ['vp', 've'])
def test_vp_and_ve_preconditionings_equal_todays_score_parametrization(tiny_ncsnpp, kind):
  """VP: DDPM++ (positional, 999 t), score = -F/σ. VE: NCSN++ (Fourier of ln σ), score = F/σ, today's
  scale_by_sigma. EDM's wrappers with c_noise in that form give the same score on the same weights."""
  nets, x = tiny_ncsnpp
  config, variables = nets[kind]
  config = ml_collections.ConfigDict(config.to_dict())
  sde = SDES['vpsde' if kind == 'vp' else 'vesde']
  t = jnp.asarray([1e-3, 0.1, 0.5, 0.95])
  config.model.scale_by_sigma = kind == 've'  # today's VE NCSN++ divides by σ inside
  today = models.get_score_fn(sde, models.get_model(config), variables, continuous=True)(x, t)
  config.model.scale_by_sigma = False  # F is the network before that division
  wrapped = models.get_score_fn(sde, models.get_model(config), variables, continuous=True, parametrization=kind)
  # Today's VP std is the official sqrt(1 - e^{2 log α}), which cancels in float32 at t = 1e-3 (a relative error
  # of 1.2e-4 in the score there). The wrapper's σ uses expm1. Elsewhere the two agree to about 1e-6.
  wrapped_score = wrapped(x, t)
  for i, tolerance in enumerate([5e-4, 5e-5, 5e-5, 5e-5]):
    assert max_rel(wrapped_score[i], today[i]) < tolerance, float(t[i])
  # Feeding EDM's 'edm' noise input instead makes them differ: the comparison can fail.
  edm = models.get_score_fn(sde, models.get_model(config), variables, continuous=True, parametrization='edm',
                            sigma_data=1.)
  assert max_rel(edm(x, t), today) > 0.05


# ---------------------------------------------------------------- ln σ̃ ~ truncated N(P_mean, P_std²)

@pytest.mark.parametrize('sde, p_mean, p_std', [
    (sde_lib.EDMSDE(0.1, 2.), -1.2, 1.2),   # the truncation bites on both sides
    (SDES['vpsde'], -1.2, 1.2),             # EDM's defaults on the VP range [0.0014, 152]
])
def test_sampled_log_sigma_is_the_truncated_normal(sde, p_mean, p_std):
  t, log_sigma = losses.sample_edm_time(jax.random.PRNGKey(11), sde, 20000, p_mean, p_std)
  lo, hi = losses.edm_log_sigma_range(sde)
  log_sigma = np.asarray(log_sigma, np.float64)
  assert lo <= log_sigma.min() and log_sigma.max() <= hi
  a, b = (lo - p_mean) / p_std, (hi - p_mean) / p_std
  assert stats.kstest(log_sigma, stats.truncnorm(a, b, loc=p_mean, scale=p_std).cdf).pvalue > 1e-3
  np.testing.assert_allclose(-np.asarray(sde.log_snr(t)), log_sigma, atol=1e-4)  # t carries that σ̃
  if b - a < 4:  # the test would notice a missing truncation
    assert stats.kstest(log_sigma, stats.norm(p_mean, p_std).cdf).pvalue < 1e-6


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope='module')
def quickstart_edm():
  return config_table.load(str(REPO / 'configs' / 'quickstart_edm.py'))


def test_shipped_configs_pass_the_loss_checks(quickstart_edm):
  for path in ['quickstart.py', 'quickstart_edm.py', 'edm/cifar10_ddpmpp.py']:
    config = config_table.load(str(REPO / 'configs' / path))
    config_table.check(config)
    losses.check_loss_config(config)
  assert quickstart_edm.model.parametrization == 'edm' and quickstart_edm.training.loss == 'edm'
  cifar = config_table.load(str(REPO / 'configs' / 'edm' / 'cifar10_ddpmpp.py'))
  assert isinstance(sde_lib.get_sde(cifar), sde_lib.EDMSDE) and sde_lib.get_sde(cifar).T == 80.
  assert abs(cifar.model.ema_rate - 0.5 ** (512 / 500_000)) < 1e-12


@pytest.mark.parametrize('changes, says', [
    ({'training.continuous': False}, 'training.continuous=True'),
    ({'training.likelihood_weighting': True}, 'training.likelihood_weighting=False'),
    ({'training.importance_weighting': True}, 'training.importance_weighting=False'),
    ({'training.p_mean': 6.}, 'above σ̃(T)'),
    ({'training.p_mean': -9.}, 'below σ̃(eps)'),
    ({'training.loss': 'dsm', 'model.scale_by_sigma': True}, 'model.scale_by_sigma=False'),
    ({'training.loss': 'dsm', 'data.centered': False}, 'data.centered=True'),
    ({'training.loss': 'dsm', 'training.continuous': False}, 'training.continuous=True'),
    ({'model.name': 'ncsn'}, "model.name='ncsn'"),
    ({'model.sigma_data': 0.}, 'model.sigma_data'),
    ({'training.loss': 'l1'}, "training.loss='l1' is unknown"),
])
def test_bad_combinations_raise_one_line_saying_what_to_change(quickstart_edm, changes, says):
  config = ml_collections.ConfigDict(quickstart_edm.to_dict())
  for dotted, value in changes.items():
    section, field = dotted.split('.')
    config[section][field] = value
  with pytest.raises(ValueError) as error:
    losses.check_loss_config(config)
  message = str(error.value)
  assert says in message and '\n' not in message, message


def test_bad_arguments_raise():
  sde = SDES['vpsde']
  with pytest.raises(ValueError, match='continuous'):
    losses.get_loss_fn(sde, None, True, continuous=False, loss='edm')
  with pytest.raises(ValueError, match='above σ̃'):  # N(-1.2, 1.2²) mostly above σ̃(T) = 0.05
    losses.get_loss_fn(sde_lib.EDMSDE(0.002, 0.05), None, True, loss='edm')
  with pytest.raises(ValueError, match='unknown'):
    models.get_score_fn(sde, ZeroNetwork(model_config()), {}, parametrization='eps')
  with pytest.raises(ValueError, match="model.name='wideresnet"):
    models.get_score_fn(sde, ZeroNetwork(model_config('wideresnet_noise_conditional')), {}, parametrization='edm')
  with pytest.raises(ValueError, match='sigma_min'):
    sde_lib.EDMSDE(80., 0.002)


# ---------------------------------------------------------------- the EDM SDE

def test_edm_sde_is_ve_with_sigma_equal_t():
  sde = SDES['edm']
  t = jnp.asarray([0.002, 0.5, 3., 80.])
  alpha, sigma = sde.marginal_coeffs(t)
  np.testing.assert_array_equal(alpha, 1.)
  np.testing.assert_array_equal(sigma, t)
  np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-6)
  # g² = dσ²/dt = 2t, and discretize is the exact kernel over Δt = T/N.
  x = jnp.zeros((4, 2))
  np.testing.assert_allclose(sde.sde(x, t)[1] ** 2, 2 * t, rtol=1e-6)
  G = sde.discretize(x, t)[1]
  np.testing.assert_allclose(G ** 2, t ** 2 - np.maximum(t - 0.08, 0.) ** 2, rtol=1e-5)
  assert (sde.T, sde.default_sampling_eps) == (80., 0.002)
  # Importance-sampled time: p(t) ∝ g²/σ² = 2/t is log-uniform; Z = 2 ln(T/eps).
  eps = 1e-3
  np.testing.assert_allclose(sde.importance_sampling_norm(eps), 2 * np.log(80. / eps), rtol=1e-6)
  u = jnp.linspace(0., 1., 5)
  np.testing.assert_allclose(sde.importance_sampling_t(u, eps), eps * (80. / eps) ** np.asarray(u), rtol=1e-5)
  config = ml_collections.ConfigDict({'training': {'sde': 'edm'},
                                      'model': {'sigma_min': 0.002, 'sigma_max': 80, 'num_scales': 100}})
  built = sde_lib.get_sde(config)
  assert isinstance(built, sde_lib.EDMSDE) and built.T == 80. and built.N == 100
