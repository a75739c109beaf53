"""Samplers: predictor–corrector (Alg. 1–3 of Song et al. 2021) and the probability-flow ODE.

A sampler is `sampler(rng, score_fn) -> (x, nfe)`. The whole loop is one compiled
XLA program; `nfe` is the number of score evaluations it made.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde import sde_lib
from score_sde.sde_lib import batch_mul

# ---------------------------------------------------------------- predictors
# predictor(sde, score_fn, rng, x, t, probability_flow) -> (x, x_mean); PREDICTOR_NFE[name] score calls.

_PREDICTORS = {}
_CORRECTORS = {}


def standard_normal(rng, shape):
  """The one source of Gaussian noise in the steps (tests replace it to inject stored noise)."""
  return jax.random.normal(rng, shape)


def register_predictor(name, nfe=1):
  def _register(fn):
    _PREDICTORS[name] = (fn, nfe)
    return fn
  return _register


def register_corrector(name, nfe_per_step=1):
  def _register(fn):
    _CORRECTORS[name] = (fn, nfe_per_step)
    return fn
  return _register


def get_predictor(name):
  if name not in _PREDICTORS:
    raise ValueError(f'Unknown predictor {name!r}; known: {sorted(_PREDICTORS)}.')
  return _PREDICTORS[name]


def get_corrector(name):
  if name not in _CORRECTORS:
    raise ValueError(f'Unknown corrector {name!r}; known: {sorted(_CORRECTORS)}.')
  return _CORRECTORS[name]


@register_predictor('euler_maruyama')
def euler_maruyama(sde, score_fn, rng, x, t, probability_flow=False):
  """x ← x - [f - g² s] Δt + g sqrt(Δt) z, stepping backwards by Δt = T/N."""
  dt = -1. / sde.N
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  noise = standard_normal(rng, x.shape)
  return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), noise), x_mean


@register_predictor('reverse_diffusion')
def reverse_diffusion(sde, score_fn, rng, x, t, probability_flow=False):
  """The reverse of the forward discretisation (Eq. 46): x ← x - f_i + G_i² s + G_i z."""
  f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - f
  noise = standard_normal(rng, x.shape)
  return x_mean + batch_mul(G, noise), x_mean


@register_predictor('ancestral_sampling')
def ancestral_sampling(sde, score_fn, rng, x, t, probability_flow=False):
  """Ancestral sampling of the SMLD (Eq. 47) or DDPM (Eq. 7 of Ho et al.) chain."""
  noise = standard_normal(rng, x.shape)
  score = score_fn(x, t)
  if isinstance(sde, sde_lib.VESDE):
    sigma, previous = sde.adjacent_sigmas(t)
    x_mean = x + batch_mul(sigma ** 2 - previous ** 2, score)
    std = jnp.sqrt(previous ** 2 * (sigma ** 2 - previous ** 2) / sigma ** 2)
  elif isinstance(sde, sde_lib.VPSDE):
    beta = sde.discrete_betas[sde.timestep_index(t)]
    x_mean = batch_mul(1. / jnp.sqrt(1. - beta), x + batch_mul(beta, score))
    std = jnp.sqrt(beta)
  else:
    raise NotImplementedError(f'ancestral_sampling has no discrete chain for {type(sde).__name__}; '
                              'use reverse_diffusion or euler_maruyama.')
  return x_mean + batch_mul(std, noise), x_mean


@register_predictor('none', nfe=0)
def no_predictor(sde, score_fn, rng, x, t, probability_flow=False):
  return x, x


# ---------------------------------------------------------------- correctors
# corrector(sde, score_fn, rng, x, t, snr, n_steps) -> (x, x_mean); n_steps score calls.

def _langevin_alpha(sde, t):
  """α_i of the discrete chain for VP-type SDEs (Alg. 5 of the paper), 1 for VE."""
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    return sde.alphas[sde.timestep_index(t)]
  return jnp.ones_like(t)


def _norm_per_example(x):
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


def _langevin_steps(step_size_fn, sde, score_fn, rng, x, t, n_steps):
  """n_steps of x ← x + ε s(x) + sqrt(2ε) z, with ε = step_size_fn(score, noise)."""
  x_mean = x
  for step_rng in jax.random.split(rng, n_steps):  # n_steps is small: unrolled
    grad = score_fn(x, t)
    noise = standard_normal(step_rng, x.shape)
    step_size = step_size_fn(grad, noise)
    x_mean = x + batch_mul(step_size, grad)
    x = x_mean + batch_mul(jnp.sqrt(2 * step_size), noise)
  return x, x_mean


@register_corrector('langevin')
def langevin(sde, score_fn, rng, x, t, snr, n_steps):
  """Langevin MCMC with step size 2 α (snr ‖z‖ / ‖s‖)², norms averaged over the batch (Alg. 4–5)."""
  alpha = _langevin_alpha(sde, t)

  def step_size(grad, noise):
    grad_norm = jnp.mean(_norm_per_example(grad))
    noise_norm = jnp.mean(_norm_per_example(noise))
    return (snr * noise_norm / grad_norm) ** 2 * 2 * alpha

  return _langevin_steps(step_size, sde, score_fn, rng, x, t, n_steps)


@register_corrector('ald')
def annealed_langevin_dynamics(sde, score_fn, rng, x, t, snr, n_steps):
  """Annealed Langevin dynamics of NCSN: step size 2 α (snr σ(t))²."""
  alpha = _langevin_alpha(sde, t)
  std = sde.marginal_prob(x, t)[1]
  return _langevin_steps(lambda grad, noise: (snr * std) ** 2 * 2 * alpha,
                         sde, score_fn, rng, x, t, n_steps)


@register_corrector('none', nfe_per_step=0)
def no_corrector(sde, score_fn, rng, x, t, snr, n_steps):
  return x, x


# ---------------------------------------------------------------- samplers

def check_predictor(sde, predictor, probability_flow):
  """Refuses predictor settings that have no meaning for `sde`."""
  if predictor == 'ancestral_sampling' and not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
    raise ValueError(f'ancestral_sampling is defined for VESDE and VPSDE only, not {type(sde).__name__}.')
  if predictor == 'ancestral_sampling' and probability_flow:
    raise ValueError('ancestral_sampling has no probability-flow form; use reverse_diffusion or euler_maruyama.')


def shard_batch(x, sharding):
  """Places the batch axis of x across devices (e.g. NamedSharding(mesh, P('data'))); XLA shards the loop."""
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def get_pc_sampler(sde, shape, predictor='reverse_diffusion', corrector='langevin', inverse_scaler=None,
                   snr=0.16, n_steps=1, probability_flow=False, continuous=False, denoise=True, eps=1e-3,
                   sharding=None):
  """Predictor–corrector sampler over N = sde.N uniform steps from T down to eps.

  Each step applies the corrector, then the predictor, as the official code does.
  With `denoise`, the noise-free mean of the last predictor step is returned.
  `continuous` is accepted for compatibility; times are always passed as floats.
  With `sharding`, the batch is split across devices; batch means (Langevin) stay global.
  """
  predictor_fn, predictor_nfe = get_predictor(predictor)
  corrector_fn, corrector_nfe = get_corrector(corrector)
  check_predictor(sde, predictor, probability_flow)
  inverse_scaler = inverse_scaler or (lambda x: x)
  nfe = sde.N * (predictor_nfe + corrector_nfe * n_steps)

  @eqx.filter_jit
  def sampler(rng, score_fn):
    rng, prior_rng = jax.random.split(rng)
    x = shard_batch(sde.prior_sampling(prior_rng, shape), sharding)
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def step(carry, inputs):
      x, _ = carry
      t, step_rng = inputs
      corrector_rng, predictor_rng = jax.random.split(step_rng)
      vec_t = jnp.full((shape[0],), t)
      x, x_mean = corrector_fn(sde, score_fn, corrector_rng, x, vec_t, snr, n_steps)
      x, x_mean = predictor_fn(sde, score_fn, predictor_rng, x, vec_t, probability_flow)
      return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), (timesteps, jax.random.split(rng, sde.N)))
    return inverse_scaler(x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

  return sampler


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


def get_ode_sampler(sde, shape, inverse_scaler=None, denoise=False, rtol=1e-5, atol=1e-5, eps=1e-3,
                    sharding=None):
  """Samples by integrating the probability-flow ODE from T to eps (adaptive RK45).

  `sampler(rng, score_fn, z=None)`: z is an optional latent at time T.
  With `denoise`, one noise-free reverse-diffusion step at eps follows.
  """
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


SAMPLERS = ('pc', 'ode')


def get_sampling_fn(config, sde, shape, inverse_scaler=None, eps=None, sharding=None):
  """The sampler chosen by `config.sampling` (method 'pc' or 'ode')."""
  s = config.sampling
  method = s.method.lower()
  if eps is None:  # the official run_lib's sampling_eps
    eps = 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3
  if method == 'ode':
    return get_ode_sampler(sde, shape, inverse_scaler, denoise=s.noise_removal, eps=eps,
                           rtol=getattr(s, 'rtol', 1e-5), atol=getattr(s, 'atol', 1e-5), sharding=sharding)
  if method == 'pc':
    return get_pc_sampler(sde, shape, s.predictor.lower(), s.corrector.lower(), inverse_scaler,
                          snr=s.snr, n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                          continuous=config.training.continuous, denoise=s.noise_removal, eps=eps,
                          sharding=sharding)
  raise ValueError(f'Unknown sampling method {s.method!r}; known: {list(SAMPLERS)}.')


def sampler_names():
  return list(SAMPLERS)


def predictor_names():
  return sorted(_PREDICTORS)


def corrector_names():
  return sorted(_CORRECTORS)
