"""DDIM (Song, Meng & Ermon 2021) for any SDE with a Gaussian kernel x_t = α x_0 + σ z.

From s to t: x̂_0 = x̂_0(x_s, s), ε̂ = (x_s - α_s x̂_0) / σ_s,
  x_t = α_t x̂_0 + sqrt(σ_t² - c²) ε̂ + c z,   c = η σ_t sqrt(1 - e^{2(λ_s - λ_t)}).
η = 0 is the deterministic DDIM (DPM-Solver++ of order 1); η = 1 the ancestral (DDPM/SMLD) posterior.
"""
import jax
import jax.numpy as jnp

from score_sde.sampling.common import (check_gaussian_kernel, check_num_steps, check_skip_type, data_prediction,
                                       make_sampler, require, resolve_eps, standard_randn_like, time_grid)
from score_sde.sampling.registry import register_sampler


@register_sampler('ddim')
def get_ddim_sampler(sde, shape, num_steps=20, eta=0., skip_type='logSNR', eps=None, denoise=True,
                     inverse_scaler=None, sharding=None, randn_like=standard_randn_like):
  """num_steps intervals (uniform in λ by default), num_steps score evaluations (+1 with denoise)."""
  check_gaussian_kernel(sde, 'ddim')
  check_num_steps(num_steps)
  require(0 <= eta <= 1, f'sampling.eta={eta!r} lies outside [0, 1]; use 0 (deterministic) to 1 (ancestral).')
  check_skip_type(skip_type)
  eps = resolve_eps(sde, eps)

  def loop(rng, score_fn, x):
    t = time_grid(sde, num_steps, eps, skip_type)
    alpha, sigma = sde.marginal_coeffs(t)
    lam = sde.log_snr(t)

    def step(x, inputs):
      s, alpha_s, sigma_s, lam_s, alpha_t, sigma_t, lam_t, step_rng = inputs
      x0 = data_prediction(sde, score_fn, x, s)
      noise_hat = (x - alpha_s * x0) / sigma_s
      c = eta * sigma_t * jnp.sqrt(-jnp.expm1(2. * (lam_s - lam_t)))
      x = alpha_t * x0 + jnp.sqrt(sigma_t ** 2 - c ** 2) * noise_hat
      if eta > 0:
        x = x + c * randn_like(step_rng, x)
      return x, None

    inputs = (t[:-1], alpha[:-1], sigma[:-1], lam[:-1], alpha[1:], sigma[1:], lam[1:],
              jax.random.split(rng, num_steps))
    return jax.lax.scan(step, x, inputs)[0]

  return make_sampler(sde, shape, loop, num_steps, eps, denoise, inverse_scaler, sharding)

