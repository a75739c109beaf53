"""Losses against their closed-form values on Gaussian data with the exact score; step, optimizer, EMA."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from score_sde import losses, sde_lib

M, S0 = 0.5, 0.2  # data x(0) ~ N(M, S0²) per dimension
BATCH, DIM = 20000, 4


class ExactGaussianScore(nn.Module):
  """A parameter-free 'network' that outputs what a perfect model would, in the official conventions."""
  sde: object
  kind: str  # 've' (outputs the score, time input σ), 'vp' (outputs -σ·score, time input 999 t),
  #            'smld' (score, time input = index into descending σ), 'ddpm' (noise, time input = step)

  def __call__(self, x, time_cond, train=False):
    sde = self.sde
    if self.kind == 've':
      a, sigma = jnp.ones_like(time_cond), time_cond
    elif self.kind == 'smld':
      a, sigma = jnp.ones_like(time_cond, jnp.float32), sde.discrete_sigmas[::-1][time_cond]
    elif self.kind == 'vp':
      a, sigma = jnp.exp(sde.log_mean_coeff(time_cond / 999.)), sde.marginal_prob(x, time_cond / 999.)[1]
    else:
      a, sigma = sde.sqrt_alphas_cumprod[time_cond], sde.sqrt_1m_alphas_cumprod[time_cond]
    a, sigma = a[:, None], sigma[:, None]
    score = -(x - a * M) / (a ** 2 * S0 ** 2 + sigma ** 2)
    return -sigma * score if self.kind in ('vp', 'ddpm') else score


def mc_loss(loss_fn):
  batch = {'image': M + S0 * jax.random.normal(jax.random.PRNGKey(0), (BATCH, DIM))}
  return float(loss_fn(jax.random.PRNGKey(1), {}, batch))


def t_average(fn, eps=1e-5):
  t = np.linspace(eps, 1., 200001)
  return np.trapezoid(fn(t), t) / (1. - eps)


def ve_sigma(t):
  return 0.01 * (50. / 0.01) ** t


def vp_alpha_sigma(t):
  a = np.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1)
  return a, np.sqrt(1 - a ** 2)


def test_continuous_ve_loss_equals_its_expectation():
  """E‖σ s + z‖²/D = a² S0² / (a² S0² + σ²) per t; likelihood weighting: g² a² S0² / (σ² (a² S0² + σ²))."""
  sde = sde_lib.VESDE(0.01, 50., 1000)
  model = ExactGaussianScore(sde, 've')
  expected = t_average(lambda t: S0 ** 2 / (S0 ** 2 + ve_sigma(t) ** 2))
  got = mc_loss(losses.get_sde_loss_fn(sde, model, train=False, reduce_mean=True))
  assert got == pytest.approx(expected, rel=0.03)
  g2_over_sigma2 = 2 * np.log(50. / 0.01)
  expected = t_average(lambda t: g2_over_sigma2 * S0 ** 2 / (S0 ** 2 + ve_sigma(t) ** 2))
  got = mc_loss(losses.get_sde_loss_fn(sde, model, train=False, reduce_mean=True, likelihood_weighting=True))
  assert got == pytest.approx(expected, rel=0.03)
  # reduce_mean=False sums over dimensions with the official factor ½.
  got_sum = mc_loss(losses.get_sde_loss_fn(sde, model, train=False, reduce_mean=False, likelihood_weighting=True))
  assert got_sum == pytest.approx(expected * DIM / 2, rel=0.03)


def test_continuous_vp_loss_equals_its_expectation():
  sde = sde_lib.VPSDE(0.1, 20., 1000)

  def per_t(t):
    a, sigma = vp_alpha_sigma(t)
    return a ** 2 * S0 ** 2 / (a ** 2 * S0 ** 2 + sigma ** 2)

  got = mc_loss(losses.get_sde_loss_fn(sde, ExactGaussianScore(sde, 'vp'), train=False, reduce_mean=True))
  assert got == pytest.approx(t_average(per_t), rel=0.03)


def test_discrete_losses_equal_their_expectations():
  """DDPM (Ho et al. Eq. 14) and NCSN (Song & Ermon Eq. 2 with λ = σ²) losses of the exact model."""
  N = 1000
  vp = sde_lib.VPSDE(0.1, 20., N)
  alphas_cumprod = np.cumprod(1 - np.linspace(0.1 / N, 20. / N, N))
  expected = np.mean(alphas_cumprod * S0 ** 2 / (alphas_cumprod * S0 ** 2 + 1 - alphas_cumprod))
  got = mc_loss(losses.get_loss_fn(vp, ExactGaussianScore(vp, 'ddpm'), train=False, reduce_mean=True,
                                   continuous=False))
  assert got == pytest.approx(expected, rel=0.03)

  ve = sde_lib.VESDE(0.01, 50., N)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.), N))
  expected = np.mean(S0 ** 2 / (S0 ** 2 + sigmas ** 2)) * DIM / 2
  got = mc_loss(losses.get_loss_fn(ve, ExactGaussianScore(ve, 'smld'), train=False, reduce_mean=False,
                                   continuous=False))
  assert got == pytest.approx(expected, rel=0.03)


def test_meaningless_combinations_are_refused():
  model = ExactGaussianScore(None, 've')
  with pytest.raises(ValueError, match='Likelihood weighting is not supported for discrete'):
    losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, continuous=False, likelihood_weighting=True)
  with pytest.raises(ValueError, match='Discrete training is defined for VESDE .* not subVPSDE'):
    losses.get_loss_fn(sde_lib.subVPSDE(), model, train=True, continuous=False)


def optim_config(**overrides):
  optim = dict(optimizer='Adam', lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0., warmup=5000, grad_clip=1.)
  optim.update(overrides)
  return ml_collections.ConfigDict({'optim': optim})


def test_learning_rate_warms_up_as_the_official_code():
  """Official: lr · min(step / warmup, 1), with step counted from 0 before the update."""
  config = optim_config(warmup=4)
  schedule = optax.linear_schedule(0., 2e-4, 4)
  for step in range(7):
    assert float(schedule(step)) == pytest.approx(2e-4 * min(step / 4, 1.))
  # And the optimizer really applies it: Adam's first update is lr·sign(g) (bias-corrected), 0 at step 0.
  optimizer = losses.get_optimizer(config)
  params = {'w': jnp.ones(3)}
  state = optimizer.init(params)
  grads = {'w': jnp.array([1e-3, -2e-3, 3e-3])}
  for step in range(3):
    updates, state = optimizer.update(grads, state, params)
    np.testing.assert_allclose(updates['w'], -2e-4 * min(step / 4, 1.) * np.sign(grads['w']), rtol=1e-4,
                               atol=1e-12)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, time_cond, train=False):
    return nn.Dense(x.shape[-1])(x)


def test_step_updates_params_ema_step_and_rng():
  sde = sde_lib.VPSDE()
  model = Linear()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)), jnp.zeros(2))['params']
  optimizer = losses.get_optimizer(optim_config(warmup=0, lr=1e-2))
  step_fn = jax.jit(losses.get_step_fn(sde, model, train=True, optimizer=optimizer, ema_rate=0.9))
  state = losses.init_train_state(jax.random.PRNGKey(1), params, optimizer)
  batch = {'image': jnp.ones((8, 3))}
  new, metrics = step_fn(state, batch)
  assert int(new.step) == 1 and np.isfinite(metrics['loss']) and float(metrics['grad_norm']) > 0
  assert not np.array_equal(new.rng, state.rng)
  for p, p_new, ema in zip(jax.tree.leaves(params), jax.tree.leaves(new.params), jax.tree.leaves(new.params_ema)):
    assert not np.allclose(p, p_new)
    np.testing.assert_allclose(ema, 0.9 * p + 0.1 * p_new, rtol=1e-6)
  # Evaluation mode leaves the parameters alone and scores the EMA parameters.
  eval_fn = jax.jit(losses.get_step_fn(sde, model, train=False))
  same, eval_metrics = eval_fn(new, batch)
  assert int(same.step) == 1 and np.isfinite(eval_metrics['loss'])
