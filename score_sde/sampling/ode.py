"""The probability-flow ODE (Eq. 13) solved by adaptive Dormand–Prince (RK45)."""
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.sampling.common import resolve_eps, shard_batch
from score_sde.sampling.pc import reverse_diffusion
from score_sde.sampling.registry import register_sampler


def _dopri5_nfe(stats):
  """Vector-field evaluations of diffrax's Dopri5: 1 at t0 (also used to pick dt0), 6 per attempted step (FSAL)."""
  return 1 + 6 * stats['num_steps']


def solve_ode(vector_field, y0, t0, t1, rtol, atol, max_steps=10_000):
  """Integrates dy/dt = vector_field(t, y) from t0 to t1 with adaptive Dormand–Prince (RK45).

  Returns the state at t1 and the number of vector-field evaluations.
  """
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), diffrax.Dopri5(),
      t0=t0, t1=t1, dt0=None, y0=y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  y1 = jax.tree_util.tree_map(lambda y: y[-1], solution.ys)
  return y1, _dopri5_nfe(solution.stats)


@register_sampler('ode')
def get_ode_sampler(sde, shape, inverse_scaler=None, denoise=False, rtol=1e-5, atol=1e-5, eps=1e-3,
                    sharding=None):
  """Samples by integrating the probability-flow ODE from T to eps (adaptive RK45).

  `sampler(rng, score_fn, z=None)`: z is an optional latent at time T.
  With `denoise`, one noise-free reverse-diffusion step at eps follows.
  eps None (or <= 0) is the SDE's default.
  """
  eps = resolve_eps(sde, eps)
  inverse_scaler = inverse_scaler or (lambda x: x)

  @eqx.filter_jit
  def sampler(rng, score_fn, z=None):
    x = shard_batch(sde.prior_sampling(rng, shape) if z is None else z, sharding)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vector_field(t, x):
      return rsde.sde(x, jnp.full((x.shape[0],), t))[0]

    x, nfe = solve_ode(vector_field, x, sde.T, eps, rtol, atol)
    if denoise:
      _, x = reverse_diffusion(sde, score_fn, rng, x, jnp.full((x.shape[0],), eps))
      nfe = nfe + 1
    return inverse_scaler(x), nfe

  return sampler
