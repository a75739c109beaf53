"""Exact likelihood through the probability-flow ODE (Sec. 4.3 and App. D.2 of Song et al. 2021).

log p_0(x(0)) = log p_T(x(T)) + ∫_0^T ∇·f̃(x(t), t) dt, with f̃ the probability-flow drift.
The divergence is estimated with Hutchinson–Skilling probes, or computed exactly.
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampling import shard_batch, solve_ode


def hutchinson_divergence(fn, x, probe):
  """f(x) and ε^T (∂f/∂x) ε per example, from one Jacobian–vector product."""
  value, jvp = jax.jvp(fn, (x,), (probe,))
  return value, jnp.sum((jvp * probe).reshape(x.shape[0], -1), axis=-1)


def exact_divergence(fn, x):
  """tr(∂f/∂x) per example, from D Jacobian–vector products (small D only).

  `fn` must act on each example independently, as drifts of score networks do.
  """
  D = int(np.prod(x.shape[1:]))
  basis = jnp.eye(D, dtype=x.dtype).reshape((D, 1) + x.shape[1:])

  def diagonal_entry(e):
    _, jvp = jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))
    return jnp.sum((jvp * e).reshape(x.shape[0], -1), axis=-1)

  return jnp.sum(jax.lax.map(diagonal_entry, basis), axis=0)


HUTCHINSON_TYPES = ('rademacher', 'gaussian', 'exact')


def bits_per_dim_offset(inverse_scaler, num_levels=256):
  """log2(levels) + log2(slope): bits of data with `num_levels` values (8 for 8-bit) from the scaled density."""
  slope = float(inverse_scaler(1.) - inverse_scaler(0.))
  return np.log2(num_levels) + np.log2(slope)


def get_likelihood_fn(sde, inverse_scaler=None, hutchinson_type='rademacher',
                      rtol=1e-5, atol=1e-5, eps=1e-5, num_levels=256, sharding=None):
  """Returns likelihood_fn(rng, score_fn, x, probe=None) -> (bpd, z, nfe).

  bpd = -(log p_T(z) + Δlog p) / (D ln 2), plus the official 8-bit offset when an
  inverse_scaler is given (log2(num_levels) for data of other depths).
  `probe` overrides the random Hutchinson probe. `sharding` splits the batch across devices.
  """
  if hutchinson_type not in HUTCHINSON_TYPES:
    raise ValueError(f'Unknown hutchinson_type {hutchinson_type!r}; known: {list(HUTCHINSON_TYPES)}.')
  offset = 0. if inverse_scaler is None else bits_per_dim_offset(inverse_scaler, num_levels)

  @eqx.filter_jit
  def likelihood_fn(rng, score_fn, x, probe=None):
    x = shard_batch(x, sharding)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift_at(t):
      return lambda x: rsde.sde(x, jnp.full((x.shape[0],), t))[0]

    if probe is None and hutchinson_type == 'gaussian':
      probe = jax.random.normal(rng, x.shape)
    elif probe is None and hutchinson_type == 'rademacher':
      probe = jax.random.rademacher(rng, x.shape, dtype=x.dtype)

    def vector_field(t, state):
      x, _ = state
      drift = drift_at(t)
      if hutchinson_type == 'exact':
        return drift(x), exact_divergence(drift, x)
      return hutchinson_divergence(drift, x, probe)

    (z, delta_logp), nfe = solve_ode(vector_field, (x, jnp.zeros(x.shape[0])), eps, sde.T, rtol, atol)
    D = np.prod(x.shape[1:])
    bpd = -(sde.prior_logp(z) + delta_logp) / (D * np.log(2)) + offset
    return bpd, z, nfe

  return likelihood_fn
