"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2) for any SDE with a Gaussian kernel.

EDM's variables: σ̃ = σ/α = e^{-λ} and x̃ = x/α, in which the probability-flow ODE is
dx̃/dσ̃ = (x̃ - D(x̃; σ̃))/σ̃ with the denoiser D = x̂_0 at the time t(σ̃) = t_from_log_snr(-log σ̃).
Noise levels σ̃_i = (σ̃_max^{1/ρ} + i/(N-1) (σ̃_min^{1/ρ} - σ̃_max^{1/ρ}))^ρ from σ̃(T) to σ̃(eps);
Heun between every two levels, so 2 (N - 1) score evaluations.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling.common import (check_gaussian_kernel, check_num_steps, data_prediction, make_sampler,
                                       require, resolve_eps, standard_randn_like)
from score_sde.sampling.registry import register_sampler


def noise_levels(sde, num_steps, eps, rho):
  """The times t_i of the levels σ̃_i (ends exactly T and eps), and σ̃_i = σ(t_i)/α(t_i)."""
  sigma_max, sigma_min = jnp.exp(-sde.log_snr(jnp.asarray([sde.T, eps])))
  i = jnp.arange(num_steps) / (num_steps - 1)
  levels = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  t = sde.t_from_log_snr(-jnp.log(levels)).at[0].set(sde.T).at[-1].set(eps)
  return t, jnp.exp(-sde.log_snr(t))


@register_sampler('edm_heun')
def get_edm_sampler(sde, shape, num_steps=20, rho=7., s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.,
                    eps=None, denoise=True, inverse_scaler=None, sharding=None, randn_like=standard_randn_like):
  """num_steps noise levels; s_churn > 0 adds noise between s_tmin <= σ̃ <= s_tmax (in σ̃ units)."""
  check_gaussian_kernel(sde, 'edm_heun')
  check_num_steps(num_steps)
  require(rho > 0, f'sampling.rho={rho!r} must be positive (EDM uses 7).')
  require(s_churn >= 0 and s_noise >= 0, f'sampling.s_churn={s_churn!r} and sampling.s_noise={s_noise!r} '
          'must be non-negative.')
  eps = resolve_eps(sde, eps)

  def denoiser(score_fn, x_tilde, t):
    """D(x̃; σ̃(t)) = x̂_0(α(t) x̃, t)."""
    alpha, _ = sde.marginal_coeffs(jnp.asarray([t]))
    return data_prediction(sde, score_fn, alpha[0] * x_tilde, t)

  def loop(rng, score_fn, x):
    t, levels = noise_levels(sde, num_steps, eps, rho)
    in_churn_range = (levels >= s_tmin) & (levels <= s_tmax)
    gamma = jnp.where(in_churn_range, min(s_churn / num_steps, np.sqrt(2.) - 1.), 0.)

    def step(x, inputs):
      t_cur, t_next, sigma_cur, sigma_next, gamma, step_rng = inputs
      # Churn: raise the noise level to σ̂ = (1 + γ) σ̃_i by adding fresh noise.
      sigma_hat = sigma_cur * (1. + gamma)
      t_hat = t_cur
      if s_churn > 0:
        t_hat = jnp.where(gamma > 0, sde.t_from_log_snr(-jnp.log(sigma_hat)), t_cur)
        # sqrt(σ̂² - σ̃_i²) = σ̃_i sqrt(γ (2 + γ)), never the square root of a rounded-negative difference.
        x = x + sigma_cur * jnp.sqrt(gamma * (2. + gamma)) * s_noise * randn_like(step_rng, x)
      # Euler step, then the trapezoidal (Heun) correction.
      d = (x - denoiser(score_fn, x, t_hat)) / sigma_hat
      x_next = x + (sigma_next - sigma_hat) * d
      d_next = (x_next - denoiser(score_fn, x_next, t_next)) / sigma_next
      return x + (sigma_next - sigma_hat) * 0.5 * (d + d_next), None

    alpha_T, _ = sde.marginal_coeffs(t[:1])
    alpha_eps, _ = sde.marginal_coeffs(t[-1:])
    inputs = (t[:-1], t[1:], levels[:-1], levels[1:], gamma[:-1], jax.random.split(rng, num_steps - 1))
    x_tilde = jax.lax.scan(step, x / alpha_T[0], inputs)[0]
    return alpha_eps[0] * x_tilde

  return make_sampler(sde, shape, loop, 2 * num_steps - 2, eps, denoise, inverse_scaler, sharding)
