"""DPM-Solver++ (Lu et al. 2022): multistep solvers of the probability-flow ODE in data prediction.

With λ = log(α/σ), the ODE's exact solution from s to t (h = λ_t - λ_s) is
  x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂_0(λ) dλ.
Expanding x̂_0 around λ_s in its derivatives D1 ≈ h x̂_0', D2 ≈ h² x̂_0'' (from earlier steps):
  x_t = (σ_t/σ_s) x_s - α_t φ1 x̂_0 + α_t φ2 D1 - α_t φ3 D2,
  φ1 = e^{-h} - 1,  φ2 = φ1/h + 1,  φ3 = φ2/h - ½.
Order 1 is DDIM; order 2 is DPM-Solver++(2M) (Alg. 2 of the paper); order 3 the third-order multistep.
The first steps use the orders their history allows. Below, m0, m1, m2 are x̂_0 at the current and the two
previous times, h1, h2 the two previous steps in λ.
"""
import jax
import jax.numpy as jnp

from score_sde.sampling.common import (check_gaussian_kernel, check_num_steps, check_skip_type, data_prediction,
                                       make_sampler, require, resolve_eps, time_grid)
from score_sde.sampling.registry import register_sampler


def _first_order(m0, m1, m2, h, h1, h2):
  return m0


def _second_order(m0, m1, m2, h, h1, h2):
  """2M: D = (1 + 1/2r) m0 - (1/2r) m1 with r = h_{i-1}/h_i, in place of x̂_0 in the first-order step."""
  r = h1 / h
  return m0 + (m0 - m1) / (2. * r)


def _third_order(m0, m1, m2, h, h1, h2):
  """3M, written as the first-order step of an effective x̂_0 = m0 - (φ2/φ1) D1 + (φ3/φ1) D2."""
  r0, r1 = h1 / h, h2 / h
  # Taylor: d1_0 = D1 - ½ r0 D2 and d1_1 = D1 - ½ (2 r0 + r1) D2, solved for D1 and D2.
  d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
  d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
  d2 = 2. * (d1_0 - d1_1) / (r0 + r1)
  phi1 = jnp.expm1(-h)
  phi2 = phi1 / h + 1.
  phi3 = phi2 / h - 0.5
  return m0 - (phi2 / phi1) * d1 + (phi3 / phi1) * d2


@register_sampler('dpm_solver++')
def get_dpm_solver_sampler(sde, shape, num_steps=20, order=2, skip_type='logSNR', eps=None, denoise=True,
                           inverse_scaler=None, sharding=None):
  """num_steps intervals (uniform in λ by default), num_steps score evaluations (+1 with denoise)."""
  check_gaussian_kernel(sde, 'dpm_solver++')
  check_num_steps(num_steps)
  require(order in (1, 2, 3), f'sampling.order={order!r} is outside 1–3; use 1, 2 or 3.')
  check_skip_type(skip_type)
  eps = resolve_eps(sde, eps)
  updates = (_first_order, _second_order, _third_order)[:order]

  def loop(rng, score_fn, x):
    t = time_grid(sde, num_steps, eps, skip_type)
    alpha, sigma = sde.marginal_coeffs(t)
    lam = sde.log_snr(t)
    h = lam[1:] - lam[:-1]
    h_before = jnp.concatenate([jnp.ones(2), h])  # h_{i-1}, h_{i-2} (unused in the first steps)
    step_order = jnp.minimum(jnp.arange(num_steps) + 1, order)

    def step(carry, inputs):
      x, m1, m2 = carry
      s, h, h1, h2, sigma_ratio, alpha_t, k = inputs
      m0 = data_prediction(sde, score_fn, x, s)
      x0 = jax.lax.switch(k - 1, updates, m0, m1, m2, h, h1, h2)
      x = sigma_ratio * x - alpha_t * jnp.expm1(-h) * x0
      return (x, m0, m1), None

    inputs = (t[:-1], h, h_before[1:-1], h_before[:-2], sigma[1:] / sigma[:-1], alpha[1:], step_order)
    return jax.lax.scan(step, (x, x, x), inputs)[0][0]

  return make_sampler(sde, shape, loop, num_steps, eps, denoise, inverse_scaler, sharding)
