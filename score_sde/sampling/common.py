"""What every sampler shares: the noise source, batch sharding, the data prediction, time grids, checks."""
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.config_table import require  # noqa: F401  (the samplers' checks)
from score_sde.registry import Registry
from score_sde.sde_lib import batch_mul


def standard_randn_like(rng, x):
  """N(0, I) shaped like x: the default Gaussian noise source. Every sampler that draws noise after the prior
  takes its source as the argument `randn_like(rng, x)`, as EDM's sampler takes `randn_like`."""
  return jax.random.normal(rng, x.shape)


def shard_batch(x, sharding):
  """Places the batch axis of x across devices (e.g. NamedSharding(mesh, P('data'))); XLA shards the loop."""
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def resolve_eps(sde, eps):
  """The final time: `eps`, or the SDE's own default when it is None or <= 0."""
  return sde.default_sampling_eps if eps is None or eps <= 0 else float(eps)


def check_num_steps(num_steps):
  require(isinstance(num_steps, int) and num_steps >= 2,
          f'sampling.num_steps={num_steps!r} is too few; use an integer >= 2.')


def check_gaussian_kernel(sde, method):
  """The few-step samplers need x_t = α x_0 + σ z and λ(t) with its inverse."""
  try:
    t = jax.ShapeDtypeStruct((1,), jnp.float32)  # traced only, nothing runs
    jax.eval_shape(lambda t: (sde.marginal_coeffs(t), sde.t_from_log_snr(sde.log_snr(t))), t)
  except NotImplementedError as error:
    raise ValueError(f"sampling.method={method!r} cannot serve {type(sde).__name__}: {error} "
                     "Use sampling.method='pc' or 'ode'.") from None


def vec(t, x):
  """The scalar time t as the (batch,) vector a score function takes."""
  return jnp.full((x.shape[0],), t)


def data_prediction(sde, score_fn, x, t):
  """x̂_0(x_t, t) = (x_t + σ² s(x_t, t)) / α = E[x_0 | x_t] (Tweedie), for a scalar t."""
  alpha, sigma = sde.marginal_coeffs(vec(t, x))
  return batch_mul(1. / alpha, x + batch_mul(sigma ** 2, score_fn(x, vec(t, x))))


TIME_GRIDS = Registry('sampling.skip_type')  # name -> grid(sde, num_steps, eps): num_steps + 1 times, T to eps


@TIME_GRIDS.register('time_uniform')
def _uniform_in_t(sde, num_steps, eps):
  return jnp.linspace(sde.T, eps, num_steps + 1)


@TIME_GRIDS.register('logSNR')
def _uniform_in_log_snr(sde, num_steps, eps):
  """Uniform in λ = log(α/σ), mapped back through the SDE's closed-form t(λ)."""
  lam_T, lam_eps = sde.log_snr(jnp.asarray([sde.T, eps]))
  t = sde.t_from_log_snr(jnp.linspace(lam_T, lam_eps, num_steps + 1))
  return t.at[0].set(sde.T).at[-1].set(eps)  # the ends exactly


def check_skip_type(skip_type):
  TIME_GRIDS.get(skip_type)


def time_grid(sde, num_steps, eps, skip_type='logSNR'):
  """num_steps + 1 times from T down to eps, uniform in λ ('logSNR') or in t ('time_uniform')."""
  return TIME_GRIDS.get(skip_type)(sde, num_steps, eps)


def make_sampler(sde, shape, loop, nfe, eps, denoise, inverse_scaler, sharding):
  """sampler(rng, score_fn, z=None) -> (x, nfe): z (or a prior draw) at T, `loop` to eps, then the
  optional Tweedie step x̂_0(x, eps) (+1 nfe). `loop(rng, score_fn, x) -> x`; all of it one XLA program
  (time grids too: they are computed while tracing, not op by op when the sampler is built)."""
  inverse_scaler = inverse_scaler or (lambda x: x)

  @eqx.filter_jit
  def sampler(rng, score_fn, z=None):
    rng, prior_rng = jax.random.split(rng)
    x = shard_batch(sde.prior_sampling(prior_rng, shape) if z is None else z, sharding)
    x = loop(rng, score_fn, x)
    if denoise:
      x = data_prediction(sde, score_fn, x, eps)
    return inverse_scaler(x), jnp.asarray(nfe + int(denoise), jnp.int32)

  return sampler
