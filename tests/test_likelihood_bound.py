"""The score_flow bound, importance-sampled time and importance-weighted training, against analytic oracles.

The data are the 2-D Gaussian mixture of toy.py, whose every marginal has an exact score and density. The SDE
coefficients g² and σ² are written out below in float64, independently of sde_lib (and checked against it).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import integrate

from score_sde import config_table, likelihood, losses, sde_lib, toy
from score_sde.sde_lib import batch_mul

MIXTURE = toy.get_toy_distribution('gmm')
D = MIXTURE.dim
EPS = 1e-5
NUM_POINTS = 4000  # held-out points
NUM_T = 256        # (t, z) draws per point
SDES = {
    'vesde': lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000),
    'vpsde': lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=1000),
    'subvpsde': lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20., N=1000),
}
if 'edm' in sde_lib.SDES:  # VE with σ(t) = t on [σ_min, σ_max] (T = 80): log-uniform importance-sampled time
  SDES['edm'] = lambda: sde_lib.SDES.get('edm')(sigma_min=0.002, sigma_max=80., N=1000)


# ------------------------------------------------------------------- float64 oracle of the SDE coefficients

def _integrated_beta(t):
  return 0.1 * t + 0.5 * (20. - 0.1) * t ** 2


def oracle_g2_sigma2(name, t):
  """(g(t)², σ(t)²) from the paper's definitions, in float64."""
  t = np.asarray(t, np.float64)
  if name == 'edm':
    return 2. * t, t ** 2
  if name == 'vesde':
    sigma2 = (0.01 * (50. / 0.01) ** t) ** 2
    return 2. * np.log(50. / 0.01) * sigma2, sigma2
  B, beta = _integrated_beta(t), 0.1 + t * (20. - 0.1)
  if name == 'vpsde':
    return beta, -np.expm1(-B)
  return beta * -np.expm1(-2. * B), np.expm1(-B) ** 2


def quad_log_t(fn, a, b):
  """∫_a^b fn(t) dt in float64, in the variable log t (the integrands here behave like 1/t near 0)."""
  value, _ = integrate.quad(lambda v: fn(np.exp(v)) * np.exp(v), np.log(a), np.log(b), epsabs=0., epsrel=1e-12,
                            limit=200)
  return value


def ratio(name):
  return lambda t: np.divide(*oracle_g2_sigma2(name, t))


# ------------------------------------------------------------------------------------------------ fixtures

def _shifted_score(exact, delta, x, t):
  return exact(x, t) + delta


class Oracle:
  """One SDE with its exact score (as a pytree score function, so a shifted score reuses the compiled bound)."""

  def __init__(self, name):
    self.name = name
    self.sde = SDES[name]()
    exact = MIXTURE.marginal_score(self.sde)
    self._shifted = lambda delta, x, t: _shifted_score(exact, delta, x, t)
    self._bounds = {}

  def score(self, delta=(0., 0.)):
    return jax.tree_util.Partial(self._shifted, jnp.asarray(delta, jnp.float32))

  def bound(self, importance_sampling=True):
    if importance_sampling not in self._bounds:
      self._bounds[importance_sampling] = likelihood.get_bound_fn(self.sde, num_t=NUM_T, eps=EPS,
                                                                  importance_sampling=importance_sampling)
    return self._bounds[importance_sampling]

  def run(self, seed, delta=(0., 0.), importance_sampling=True):
    bpd, nfe = self.bound(importance_sampling)(jax.random.PRNGKey(seed), self.score(delta), held_out())
    assert int(nfe) == NUM_T + 1
    return np.asarray(bpd, np.float64)


@functools.cache
def held_out():
  return MIXTURE.sample(jax.random.PRNGKey(2024), NUM_POINTS)


@pytest.fixture(scope='module')
def oracles():
  return {name: Oracle(name) for name in SDES}


def mean_and_stderr(values):
  values = np.asarray(values, np.float64)
  return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def prior_mismatch_bpd(sde, x, num_draws=32):
  """m(x) = E_{x_T ~ N(α_T x, σ_T² I)}[log p_T(x_T) - log π(x_T)] per point, in bits/dim (Monte Carlo)."""
  n = x.shape[0]

  @jax.jit
  def gap(x, key):
    T = jnp.full((n * num_draws,), sde.T)
    alpha_T, sigma_T = sde.marginal_coeffs(T)
    z = jax.random.normal(key, (n * num_draws, D))
    x_T = batch_mul(alpha_T, jnp.tile(x, (num_draws, 1))) + batch_mul(sigma_T, z)
    return MIXTURE.marginal_log_prob(sde, x_T, T) - sde.prior_logp(x_T)

  return np.asarray(gap(x, jax.random.PRNGKey(5)), np.float64).reshape(num_draws, n).mean(0) / (D * np.log(2))


# ------------------------------------------------------------------------------------------------ the bound

@pytest.mark.parametrize('name', list(SDES))
def test_bound_is_tight_with_the_exact_score(oracles, name):
  """With the exact score the bound is -log p0(x) + m(x) per point (m: the prior mismatch, E m = KL(p_T ‖ π))."""
  oracle = oracles[name]
  x = held_out()
  bpd = oracle.run(seed=1)
  exact = -np.asarray(MIXTURE.log_prob(x), np.float64) / (D * np.log(2))
  mismatch = prior_mismatch_bpd(oracle.sde, x)
  gap, stderr = mean_and_stderr(bpd - exact - mismatch)
  print(f'{name}: mean bound {bpd.mean():.4f} bpd, exact -log p0 {exact.mean():.4f}, prior mismatch '
        f'{mismatch.mean():.2e}; bound - exact - mismatch = {gap:+.4f} ± {stderr:.4f} '
        f'(per-point std {np.std(bpd - exact):.3f} bpd at num_t={NUM_T})')
  assert np.all(np.isfinite(bpd))
  assert stderr < 0.01, stderr  # resolution: an error of 0.04 bpd (0.06 nats in 2-D) would fail
  assert abs(gap) < 4 * stderr, (gap, stderr)
  assert abs(mismatch.mean()) < 0.01  # the prior mismatch is negligible for these SDEs


@pytest.mark.parametrize('name', list(SDES))
def test_constant_score_shift_raises_the_mean_bound_as_predicted(oracles, name):
  """s* + δ raises the mean bound by ½ ‖δ‖² ∫_eps^T g² dt / (D ln 2); paired draws (same key)."""
  oracle = oracles[name]
  g2_integral = quad_log_t(lambda t: oracle_g2_sigma2(name, t)[0], EPS, oracle.sde.T)
  target_rise = 0.3  # bpd
  delta = np.array([0.6, -0.8]) * np.sqrt(2. * D * np.log(2) * target_rise / g2_integral)
  predicted = 0.5 * np.sum(delta ** 2) * g2_integral / (D * np.log(2))
  rise, stderr = mean_and_stderr(oracle.run(seed=3, delta=delta) - oracle.run(seed=3))
  print(f'{name}: δ = {delta.round(4)}, ∫g² = {g2_integral:.3f}; mean rise {rise:.4f} ± {stderr:.4f} bpd, '
        f'predicted {predicted:.4f}')
  assert stderr < 0.1 * predicted
  assert abs(rise - predicted) < 4 * stderr, (rise, predicted, stderr)


@pytest.mark.parametrize('name', ['vpsde', 'subvpsde'])  # VE: the same draws either way
def test_importance_sampled_and_uniform_t_give_the_same_mean(oracles, name):
  """Same held-out points, independent draws: the mean paired difference is zero within its standard error."""
  oracle = oracles[name]
  importance = oracle.run(seed=5, importance_sampling=True)
  uniform = oracle.run(seed=6, importance_sampling=False)
  difference, stderr = mean_and_stderr(importance - uniform)
  exact = -np.asarray(MIXTURE.log_prob(held_out()), np.float64) / (D * np.log(2))
  print(f'{name}: importance-sampled - uniform = {difference:+.4f} ± {stderr:.4f} bpd; per-point std around '
        f'-log p0: importance {np.std(importance - exact):.3f}, uniform {np.std(uniform - exact):.3f} bpd')
  assert stderr < 0.01
  assert abs(difference) < 4 * stderr, (difference, stderr)


def test_bound_units_offset_shape_and_score_evaluations():
  """Any (batch, ...) shape; the num_levels offset of get_likelihood_fn; nfe = the score calls made (num_t + 1)."""
  sde = SDES['vpsde']()
  calls = []

  def counted(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return -x / 0.5

  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
  num_t = 5
  flat, nfe_flat = likelihood.get_bound_fn(sde, num_t=num_t)(jax.random.PRNGKey(1), counted, x.reshape(3, 16))
  jax.block_until_ready(flat)
  assert int(nfe_flat) == num_t + 1 and len(calls) == num_t + 1, (int(nfe_flat), len(calls))
  inverse_scaler = lambda v: (v + 1.) / 2.
  image, nfe = likelihood.get_bound_fn(sde, inverse_scaler=inverse_scaler, num_levels=16, num_t=num_t)(
      jax.random.PRNGKey(1), counted, x)
  assert image.shape == (3,) and int(nfe) == num_t + 1
  # log2(16 levels) + log2(slope ½) = 3 bits on top of the continuous bpd of the same draws.
  np.testing.assert_allclose(np.asarray(image) - np.asarray(flat), 3., atol=1e-4)
  assert likelihood.bits_per_dim_offset(inverse_scaler, 16) == 3.


# ------------------------------------------------------------------------------ importance-sampled time

@pytest.mark.parametrize('name', list(SDES))
def test_inverse_cdf_matches_quadrature_of_g2_over_sigma2(name):
  """Z = ∫ g²/σ² and F(t(u)) = u, with F from float64 quadrature of the paper's g² and σ²."""
  sde = SDES[name]()
  for t in (0.1, 0.5, 0.9):  # the float64 oracle is this SDE
    g2, sigma2 = oracle_g2_sigma2(name, t)
    tt = jnp.full((1,), t)
    np.testing.assert_allclose(float(sde.sde(jnp.zeros((1, D)), tt)[1][0]) ** 2, g2, rtol=1e-5)
    np.testing.assert_allclose(float(sde.marginal_prob(jnp.zeros((1, D)), tt)[1][0]) ** 2, sigma2, rtol=1e-5)
  norm = quad_log_t(ratio(name), EPS, sde.T)
  np.testing.assert_allclose(float(sde.importance_sampling_norm(EPS)), norm, rtol=1e-6)
  u = np.concatenate([[0., 1e-7, 1e-5, 1e-3], np.linspace(0.01, 0.99, 99), [0.999, 1. - 1e-6, 1.]])
  t = np.asarray(sde.importance_sampling_t(jnp.asarray(u, jnp.float32), EPS), np.float64)
  assert t.shape == u.shape and np.all(np.diff(t) >= 0), t
  assert t[0] >= EPS * (1 - 1e-6) and t[-1] <= sde.T, (t[0], t[-1])
  cdf = np.array([quad_log_t(ratio(name), EPS, max(ti, EPS)) for ti in t]) / norm
  worst = np.abs(cdf - u).max()
  # The error in t itself, to first order: (F(t) - u) / F'(t) relative to t (float32 resolves 6e-8).
  t_error = (np.abs(cdf - u) / (ratio(name)(np.maximum(t, EPS)) / norm * np.maximum(t, EPS))).max()
  print(f'{name}: Z = {norm:.4f}, max |F(t(u)) - u| = {worst:.2e}, max relative error of t {t_error:.1e} over '
        f'{len(u)} u in [0, 1]')
  assert worst < 1e-5, worst
  assert t_error < 5e-6, t_error  # float32 floor: about 1e-6 (the ulp of F(eps) + u Z)
  # Any shape, and float32 draws never fall below eps (the arccosh form of sub-VP gives t = 0 for many).
  fine = jax.random.uniform(jax.random.PRNGKey(0), (50, 200))
  drawn = sde.importance_sampling_t(fine, EPS)
  assert drawn.shape == (50, 200) and float(drawn.min()) >= EPS * (1 - 1e-6)


def test_normalisers_match_the_note():
  assert abs(float(SDES['vpsde']().importance_sampling_norm(EPS)) - 23.86) < 0.01
  assert abs(float(SDES['subvpsde']().importance_sampling_norm(EPS)) - 37.68) < 0.01
  ve = SDES['vesde']()
  np.testing.assert_allclose(np.asarray(ve.importance_sampling_t(jnp.asarray([0., 0.25, 1.]), EPS)),
                             [EPS, EPS + 0.25 * (1 - EPS), 1.], rtol=1e-6)


# ----------------------------------------------------------------------------------- training with it

class ExactNoisePrediction(nn.Module):
  """A parameter-free 'network' outputting what a perfect VP/sub-VP model would: -σ s*(x, t), time input 999 t."""
  sde: object

  def __call__(self, x, time_cond, train=False):
    t = time_cond / 999.
    std = self.sde.marginal_prob(x, t)[1]
    return -batch_mul(std, MIXTURE.marginal_score(self.sde)(x, t))


def _loss_draws(sde, importance_weighting, num_draws=4000, batch_size=8):
  loss_fn = losses.get_loss_fn(sde, ExactNoisePrediction(sde), train=False, reduce_mean=False, continuous=True,
                               likelihood_weighting=True, importance_weighting=importance_weighting)

  def one(key):
    data_rng, loss_rng = jax.random.split(key)
    return loss_fn(loss_rng, {}, {'image': MIXTURE.sample(data_rng, batch_size)})

  return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(9), num_draws)), np.float64)


def expected_likelihood_weighted_loss(sde, name, n=16000, num_nodes=161):
  """E_{t~U[eps,T]} E_{x,z}[½ g² ‖s* + z/σ‖²] by quadrature in log t of float64 g²/σ² times a Monte Carlo
  E‖σ s* + z‖² (x stratified by component, the same (x, z) at every t); its mean and standard error."""
  counts = [int(round(w * n)) for w in MIXTURE.weights]
  centres = jnp.asarray(np.repeat(np.asarray(MIXTURE.means), counts, 0), jnp.float32)
  spreads = jnp.asarray(np.repeat(np.asarray(MIXTURE.stds), counts), jnp.float32)
  v = np.linspace(np.log(EPS), 0., num_nodes)

  @jax.jit
  def squared_errors(t, key):
    x_rng, z_rng = jax.random.split(key)
    x = centres + spreads[:, None] * jax.random.normal(x_rng, centres.shape)
    z = jax.random.normal(z_rng, x.shape)

    def at(time):
      t_vec = jnp.full((x.shape[0],), time)
      mean, std = sde.marginal_prob(x, t_vec)
      score = MIXTURE.marginal_score(sde)(mean + batch_mul(std, z), t_vec)
      return jnp.sum((batch_mul(std, score) + z) ** 2, axis=-1)

    return jax.lax.map(at, t)

  errors = np.asarray(squared_errors(jnp.asarray(np.exp(v), jnp.float32), jax.random.PRNGKey(12)), np.float64)
  per_sample = np.trapezoid(0.5 * ratio(name)(np.exp(v))[:, None] * errors * np.exp(v)[:, None], v, axis=0)
  return mean_and_stderr(per_sample / (1. - EPS))


def test_importance_weighting_keeps_the_training_loss_and_lowers_its_variance():
  """Likelihood-weighted loss, t ~ U vs t ~ p(t): the same mean (and that of quadrature over t); the variance of
  a batch's loss falls."""
  sde = SDES['vpsde']()
  uniform = _loss_draws(sde, importance_weighting=False)
  importance = _loss_draws(sde, importance_weighting=True)
  (m_u, se_u), (m_i, se_i) = mean_and_stderr(uniform), mean_and_stderr(importance)
  m_q, se_q = expected_likelihood_weighted_loss(sde, 'vpsde')
  variance_ratio = uniform.var() / importance.var()
  print(f'likelihood-weighted loss (batch 8, {len(uniform)} batches): uniform t {m_u:.3f} ± {se_u:.3f} '
        f'(var {uniform.var():.1f}), importance-sampled {m_i:.3f} ± {se_i:.3f} (var {importance.var():.2f}), '
        f'quadrature over t {m_q:.3f} ± {se_q:.3f}; variance ratio uniform/importance {variance_ratio:.0f}x')
  assert se_i < 0.01 * m_i and se_q < 0.01 * m_q
  assert abs(m_i - m_q) < 4 * np.hypot(se_i, se_q), (m_i, m_q)
  assert abs(m_u - m_i) < 4 * np.hypot(se_u, se_i), (m_u, m_i)
  assert variance_ratio > 20, variance_ratio


def test_default_loss_keeps_its_key_usage():
  """importance_weighting=False is today's loss: t ~ U(eps, T) from the first of three keys, z from the second."""
  sde = SDES['vpsde']()
  model = ExactNoisePrediction(sde)
  batch = {'image': MIXTURE.sample(jax.random.PRNGKey(3), 16)}
  rng = jax.random.PRNGKey(4)
  value = float(jax.jit(losses.get_loss_fn(sde, model, train=False, likelihood_weighting=True))(rng, {}, batch))

  @jax.jit
  def expected(rng, data):
    t_rng, z_rng, _ = jax.random.split(rng, 3)
    t = jax.random.uniform(t_rng, (16,), minval=EPS, maxval=1.)
    z = jax.random.normal(z_rng, (16, D))
    mean, std = sde.marginal_prob(data, t)
    score = MIXTURE.marginal_score(sde)(mean + batch_mul(std, z), t)
    g2 = sde.sde(data, t)[1] ** 2
    return jnp.mean(0.5 * jnp.sum((score + batch_mul(1. / std, z)) ** 2, axis=-1) * g2)

  np.testing.assert_allclose(value, float(expected(rng, batch['image'])), rtol=1e-5)


# ------------------------------------------------------------------------------------------ bad inputs

class NoClosedFormSDE(sde_lib.VPSDE):
  """A VP SDE that does not tell its importance-sampled time (as a user-defined SDE might)."""
  importance_sampling_norm = sde_lib.SDE.importance_sampling_norm
  importance_sampling_t = sde_lib.SDE.importance_sampling_t


def _one_line_error(fn, match):
  with pytest.raises(ValueError, match=match) as info:
    fn()
  assert '\n' not in str(info.value), str(info.value)


def test_bad_inputs_raise_one_line_value_errors():
  vp = SDES['vpsde']()
  model = ExactNoisePrediction(vp)
  _one_line_error(lambda: losses.get_loss_fn(vp, model, False, likelihood_weighting=False, importance_weighting=True),
                  r'needs training\.likelihood_weighting=True')
  _one_line_error(lambda: losses.get_loss_fn(vp, model, False, continuous=False, likelihood_weighting=True,
                                             importance_weighting=True), r'set training\.continuous=True')
  _one_line_error(lambda: losses.get_sde_loss_fn(vp, model, False, likelihood_weighting=False,
                                                 importance_weighting=True), r'training\.likelihood_weighting=True')
  no_closed_form = NoClosedFormSDE()
  _one_line_error(lambda: losses.get_loss_fn(no_closed_form, model, False, likelihood_weighting=True,
                                             importance_weighting=True),
                  r'NoClosedFormSDE has no closed-form importance-sampled time; set training\.importance_weighting')
  _one_line_error(lambda: likelihood.get_bound_fn(no_closed_form),
                  r'no closed-form importance-sampled time; pass importance_sampling=False')
  likelihood.get_bound_fn(no_closed_form, importance_sampling=False)  # uniform t needs no closed form
  for num_t in (0, -3, 2.5, True):
    _one_line_error(lambda: likelihood.get_bound_fn(vp, num_t=num_t), r'num_t=.* must be a positive integer')
  _one_line_error(lambda: likelihood.get_bound_fn(vp, eps=0.), r'eps=0\.0 must lie in \(0, T')
  for method in ('importance_sampling_norm', 'importance_sampling_t'):
    with pytest.raises(NotImplementedError, match='has no closed-form importance-sampled time'):
      getattr(no_closed_form, method)(*((jnp.zeros(3), EPS) if method.endswith('_t') else (EPS,)))
  # The config table knows the new fields and refuses bad values.
  fields = config_table.FIELDS
  assert fields['training.importance_weighting'].default is False
  assert fields['eval.bpd_method'].default == 'ode' and fields['eval.bound_num_t'].default == 256
  assert fields['eval.bound_importance_sampling'].default is True
  assert fields['eval.dequantization_samples'].default == 1
  assert fields['eval.bound_num_t'].domain(0) and fields['eval.dequantization_samples'].domain(0)
  assert fields['eval.bpd_method'].domain('elbo') and fields['training.importance_weighting'].domain('yes')
  assert not any(fields['eval.bpd_method'].domain(m) for m in ('ode', 'bound', 'both'))
