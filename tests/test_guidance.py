"""Classifier-free guidance (controllable.classifier_free_guided_score) against exact scores.

References are analytic: the guided score of Gaussian classes, a labelled Gaussian mixture's component and marginal
scores (toy.GaussianMixture.conditional_score, whose two parts are checked against their own formulas here), and
the exact output moments of the samplers for a guided score that is linear in x.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp

from helpers import MIXTURE, component_failures, exact_classifier
from score_sde import controllable, sampling, sde_lib, toy

N_PER_CLASS = 2000
VP = sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=1000)


def np_coeffs(t, beta_min=0.1, beta_max=20.):
  """α(t), σ(t) of the VP SDE in float64, from its closed form (not from sde_lib)."""
  log_alpha = -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min
  return np.exp(log_alpha), np.sqrt(1. - np.exp(2. * log_alpha))


# ---------------------------------------------------------------- the formula

CLASS_MEANS = np.array([[2., -1.], [-1., 1.5], [0.5, 3.]])
NULL_MEAN = np.array([0.3, 0.2])
DATA_STD = 0.5


def gaussian_classes(sde):
  """s(x, t, y) of x_0 | y ~ N(CLASS_MEANS[y], DATA_STD² I), and of N(NULL_MEAN, DATA_STD² I) for y = None."""
  def score_fn(x, t, labels=None):
    alpha, sigma = sde.marginal_coeffs(t)
    mean = jnp.asarray(NULL_MEAN, jnp.float32) if labels is None else jnp.asarray(CLASS_MEANS, jnp.float32)[labels]
    return -(x - alpha[:, None] * mean) / (alpha ** 2 * DATA_STD ** 2 + sigma ** 2)[:, None]
  return score_fn


def np_gaussian_score(x, t, mean):
  alpha, sigma = np_coeffs(t)
  return -(x - alpha[:, None] * mean) / (alpha ** 2 * DATA_STD ** 2 + sigma ** 2)[:, None]


@pytest.mark.parametrize('scale', [0., 1., 2.5])
@pytest.mark.parametrize('interval', [None, (0.3, 5.)])
def test_the_transform_is_the_formula(scale, interval):
  """s(x,t,∅) + γ (s(x,t,y) − s(x,t,∅)) where σ_lo < σ/α <= σ_hi (everywhere without interval), s(x,t,y) elsewhere."""
  t = np.linspace(0.01, 1., 64)
  alpha, sigma = np_coeffs(t)
  noise_level = sigma / alpha
  labels = np.arange(64) % 3
  x = np.random.default_rng(0).normal(size=(64, 2)) * 2.
  guided = controllable.classifier_free_guided_score(gaussian_classes(VP), labels, scale, interval, VP)
  actual = np.asarray(guided(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)), np.float64)
  cond, uncond = np_gaussian_score(x, t, CLASS_MEANS[labels]), np_gaussian_score(x, t, NULL_MEAN)
  inside = np.ones(64, bool) if interval is None else (interval[0] < noise_level) & (noise_level <= interval[1])
  if interval is not None:
    assert 10 < inside.sum() < 54  # both cases are tested
  expected = np.where(inside[:, None], uncond + scale * (cond - uncond), cond)
  np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


def test_an_interval_needs_the_sde():
  with pytest.raises(ValueError, match='sde='):
    controllable.classifier_free_guided_score(gaussian_classes(VP), [0], 2., interval=(0.3, 5.))


def test_the_mixture_scores_are_the_component_and_marginal_formulas():
  """toy's exact class-conditional score: −(x − α μ_y)/(α² s_y² + σ²) for a label; for None the mixture score,
  Σ_k r_k(x) (−(x − α μ_k)/(α² s_k² + σ²)) with r_k the posterior of component k."""
  rng = np.random.default_rng(1)
  x, t, labels = rng.normal(size=(32, 2)) * 3., rng.uniform(0.01, 1., 32), rng.integers(0, 3, 32)
  score = MIXTURE.conditional_score(VP)
  alpha, sigma = np_coeffs(t)
  mu, s = np.asarray(MIXTURE.means)[labels], np.asarray(MIXTURE.stds)[labels]
  expected = -(x - alpha[:, None] * mu) / (alpha ** 2 * s ** 2 + sigma ** 2)[:, None]
  as_float = (lambda a: jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(score(as_float(x), as_float(t), jnp.asarray(labels)), expected, rtol=1e-4, atol=1e-5)
  # None: the components' scores weighted by their posterior responsibilities, here in float64
  var = alpha[:, None] ** 2 * np.asarray(MIXTURE.stds) ** 2 + sigma[:, None] ** 2  # (batch, K)
  centred = x[:, None, :] - alpha[:, None, None] * np.asarray(MIXTURE.means)  # (batch, K, 2)
  log_r = np.log(MIXTURE.weights) - 0.5 * np.sum(centred ** 2, -1) / var - np.log(2 * np.pi * var)
  r = np.exp(log_r - log_r.max(1, keepdims=True))
  r /= r.sum(1, keepdims=True)
  marginal = np.sum(r[..., None] * -centred / var[..., None], axis=1)
  np.testing.assert_allclose(score(as_float(x), as_float(t)), marginal, rtol=1e-4, atol=1e-5)


def test_classifier_guidance_and_cfg_compose():
  """With the exact classifier, s(x,t,∅) + ∇ log p_t(y|x) = s(x,t,y): CFG at γ = 0 plus classifier guidance of
  scale 1 is CFG at γ = 1 (Bayes' rule), and guiding both ways adds the two terms."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(64, 2)) * 2., jnp.float32)
  t = jnp.asarray(rng.uniform(0.05, 1., 64), jnp.float32)
  labels = jnp.arange(64) % 3
  score, classifier = MIXTURE.conditional_score(VP), exact_classifier(MIXTURE, VP)
  unconditional = controllable.classifier_free_guided_score(score, labels, 0.)
  both = controllable.classifier_guided_score(unconditional, classifier, labels, scale=1.)
  conditional = controllable.classifier_free_guided_score(score, labels, 1.)
  np.testing.assert_allclose(both(x, t), conditional(x, t), rtol=1e-3, atol=1e-3)


def test_a_new_label_scale_or_interval_does_not_recompile():
  traces = []

  def counted(x, t, labels=None):
    traces.append(1)  # runs while tracing only
    return gaussian_classes(VP)(x, t, labels)

  sampler = sampling.get_sampler('ddim', VP, (6, 2), num_steps=4)
  settings = (([0, 1, 2] * 2, 2., (0.3, 5.)), ([2] * 6, 0.5, (0.1, 9.)), ([1] * 6, 3., (1., 2.)))
  for i, (labels, scale, interval) in enumerate(settings):
    guided = controllable.classifier_free_guided_score(counted, labels, scale, interval, VP)
    jax.block_until_ready(sampler(jax.random.PRNGKey(0), guided)[0])
    if i == 0:
      first = len(traces)
  assert len(traces) == first > 0


# ---------------------------------------------------------------- γ = 1 and γ = 0 on a labelled mixture

SAMPLERS = {  # name -> options: every sampler of the registry, on the VP SDE
    'pc': dict(predictor='reverse_diffusion', corrector='none'),
    'ode': dict(rtol=1e-5, atol=1e-5),
    'ddim': dict(num_steps=100),
    'dpm_solver++': dict(num_steps=30, order=2),
    'edm_heun': dict(num_steps=30),
}


@pytest.fixture(scope='module')
def class_labels():
  return jnp.arange(3 * N_PER_CLASS) % 3


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_gamma_1_samples_each_class_and_gamma_0_the_mixture(name, class_labels):
  """One compiled sampler per name, run at γ = 1 (each label's own component, exactly) and γ = 0 (the mixture)."""
  sampler = sampling.get_sampler(name, VP, (3 * N_PER_CLASS, 2), **SAMPLERS[name])
  score = MIXTURE.conditional_score(VP)
  conditional, _ = sampler(jax.random.PRNGKey(3), controllable.classifier_free_guided_score(score, class_labels, 1.))
  failures, figures = component_failures(conditional, class_labels, MIXTURE.means, MIXTURE.stds, mean_tol=0.12)
  print(f'\n{name}, γ = 1 (class: mean error in stds, std ratios, KS):', figures)
  assert not failures, failures
  unconditional, _ = sampler(jax.random.PRNGKey(4), controllable.classifier_free_guided_score(score, class_labels, 0.))
  report = toy.mixture_report(unconditional, MIXTURE, jax.random.PRNGKey(5))
  assert not toy.mixture_failures(report), toy.mixture_failures(report)
  assert len(component_failures(unconditional, class_labels, MIXTURE.means, MIXTURE.stds)[0]) >= 3  # can fail


# ---------------------------------------------------------------- equal-variance Gaussian classes

@pytest.mark.parametrize('sde', [VP, sde_lib.VESDE(sigma_min=0.01, sigma_max=50.)], ids=['vp', 've'])
def test_equal_variances_guided_score_is_a_shifted_gaussians(sde):
  """With N(μ_c, σ²) given y and N(μ_u, σ²) unconditionally, s̃ = score of the diffused N(μ_c + w (μ_c − μ_u), σ²)."""
  rng = np.random.default_rng(4)
  t = jnp.asarray(rng.uniform(1e-3, 1., 48), jnp.float32)
  x = jnp.asarray(rng.normal(size=(48, 2)) * 3., jnp.float32)
  labels = np.arange(48) % 3
  scale = 2.5
  guided = controllable.classifier_free_guided_score(gaussian_classes(sde), labels, scale)(x, t)
  shifted = CLASS_MEANS[labels] + (scale - 1.) * (CLASS_MEANS[labels] - NULL_MEAN)
  alpha, sigma = (np.asarray(c, np.float64) for c in sde.marginal_coeffs(t))
  expected = -(np.asarray(x) - alpha[:, None] * shifted) / (alpha ** 2 * DATA_STD ** 2 + sigma ** 2)[:, None]
  np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('name', ['ode', 'pc'])
def test_equal_variances_ode_and_sde_samplers_return_the_shifted_gaussian(name, class_labels):
  scale = 2.
  sampler = sampling.get_sampler(name, VP, (3 * N_PER_CLASS, 2), **SAMPLERS[name])
  x, _ = sampler(jax.random.PRNGKey(6),
                 controllable.classifier_free_guided_score(gaussian_classes(VP), class_labels, scale))
  shifted = CLASS_MEANS + (scale - 1.) * (CLASS_MEANS - NULL_MEAN)
  failures, figures = component_failures(x, class_labels, shifted, [DATA_STD] * 3)
  print(f'\n{name}, γ = {scale}:', figures)
  assert not failures, failures
  assert component_failures(x, class_labels, CLASS_MEANS, [DATA_STD] * 3)[0]  # not the plain classes


# ---------------------------------------------------------------- unequal variances, 1-D: exact moments

SIGMA_MAX, SIGMA_MIN = 80., 0.002
MEAN_C, STD_C, MEAN_U, STD_U, W = 1., 0.5, 0., 1., 1.  # the note's example; γ = 1 + w = 2


def one_d_score(x, t, labels=None):
  """VE (α = 1): N(MEAN_C, STD_C²) given any label, N(MEAN_U, STD_U²) for None, diffused to σ(t)."""
  sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
  mean, std = (MEAN_U, STD_U) if labels is None else (MEAN_C, STD_C)
  return -(x - mean) / (std ** 2 + sigma ** 2)[:, None]


def exact_moments(kind, sigma_end):
  """Mean and std of the sampler output for the linear guided score s̃ = −a x + b, in u = σ² from σ_max² down:
  probability flow dx/du = ½ (a x − b): dm/du = ½ (a m − b), dv/du = a v; reverse SDE dm/du = a m − b,
  dv/du = 2 a v − 1. The prior N(0, σ_max²) starts both."""
  def coefficients(u):
    a = (1 + W) / (STD_C ** 2 + u) - W / (STD_U ** 2 + u)
    return a, (1 + W) * MEAN_C / (STD_C ** 2 + u) - W * MEAN_U / (STD_U ** 2 + u)

  def flow(u, y):
    a, b = coefficients(u)
    return [0.5 * (a * y[0] - b), a * y[1]] if kind == 'ode' else [a * y[0] - b, 2 * a * y[1] - 1]
  solution = solve_ivp(flow, (SIGMA_MAX ** 2, sigma_end ** 2), [0., SIGMA_MAX ** 2], method='LSODA', rtol=1e-10,
                       atol=1e-12)
  return solution.y[0, -1], np.sqrt(solution.y[1, -1])


def test_the_moment_equations_give_the_notes_figures():
  """The exact moments: σ from 80 to 0, ODE mean 1.3739 std 0.2500, reverse SDE 1.2500 and 0.3307."""
  np.testing.assert_allclose(exact_moments('ode', 0.), (1.3739, 0.2500), atol=1e-4)
  np.testing.assert_allclose(exact_moments('sde', 0.), (1.2500, 0.3307), atol=1e-4)


@pytest.fixture(scope='module')
def one_d_outputs():
  """40,000 outputs of the ODE sampler and of the reverse-SDE (PC reverse diffusion) sampler, VE 80 -> 0.002."""
  sde = sde_lib.VESDE(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, N=2000)
  labels = jnp.zeros(40000, jnp.int32)
  guided = controllable.classifier_free_guided_score(one_d_score, labels, 1. + W)
  outputs = {}
  for kind, name in (('ode', 'ode'), ('sde', 'pc')):
    sampler = sampling.get_sampler(name, sde, (40000, 1), **SAMPLERS[name])
    outputs[kind] = np.asarray(sampler(jax.random.PRNGKey(7), guided)[0], np.float64)[:, 0]
  return outputs


@pytest.mark.parametrize('kind', ['ode', 'sde'])
def test_unequal_variances_samplers_match_their_exact_moments(kind, one_d_outputs):
  x = one_d_outputs[kind]
  mean, std = exact_moments(kind, SIGMA_MIN)
  print(f'\n{kind}: mean {x.mean():.4f} (exact {mean:.4f}), std {x.std():.4f} (exact {std:.4f})')
  assert abs(x.mean() - mean) < 5 * std / np.sqrt(len(x)) + 2e-3
  assert abs(x.std() / std - 1) < 0.01
  assert stats.kstest(x, stats.norm(mean, std).cdf).statistic < 1.95 / np.sqrt(len(x))


def test_unequal_variances_ode_and_sde_differ_and_neither_is_the_tilted_data(one_d_outputs):
  """q_0 ∝ N(1, 0.5²)² N(0, 1)^-1 = N(1.1429, 0.3780²) is what neither guided sampler draws."""
  ode, sde = one_d_outputs['ode'], one_d_outputs['sde']
  stderr = np.sqrt((ode.var() + sde.var()) / len(ode))
  assert ode.mean() - sde.mean() > 20 * stderr
  precision = (1 + W) / STD_C ** 2 - W / STD_U ** 2
  tilted_mean = ((1 + W) * MEAN_C / STD_C ** 2 - W * MEAN_U / STD_U ** 2) / precision
  assert abs(tilted_mean - 1.1429) < 1e-4 and abs(precision ** -0.5 - 0.3780) < 1e-4
  for x in (ode, sde):
    assert abs(x.mean() - tilted_mean) > 0.1
