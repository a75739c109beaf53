"""Predictor–corrector sampling (Alg. 1–3 of Song et al. 2021): the registries of predictors and correctors."""
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde import sde_lib
from score_sde.sampling.common import normal, resolve_eps, shard_batch
from score_sde.sampling.registry import register_sampler
from score_sde.sde_lib import batch_mul

# predictor(sde, score_fn, rng, x, t, probability_flow) -> (x, x_mean), with `nfe` score calls.
# corrector(sde, score_fn, rng, x, t, snr, n_steps) -> (x, x_mean), with n_steps * `nfe_per_step` score calls.
_PREDICTORS = {}
_CORRECTORS = {}


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


def predictor_names():
  return sorted(_PREDICTORS)


def corrector_names():
  return sorted(_CORRECTORS)


# ---------------------------------------------------------------- predictors

@register_predictor('euler_maruyama')
def euler_maruyama(sde, score_fn, rng, x, t, probability_flow=False):
  """x ← x - [f - g² s] Δt + g sqrt(Δt) z, stepping backwards by Δt = T/N."""
  dt = -1. / sde.N
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  noise = normal(rng, x.shape)
  return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), noise), x_mean


@register_predictor('reverse_diffusion')
def reverse_diffusion(sde, score_fn, rng, x, t, probability_flow=False):
  """The reverse of the forward discretisation (Eq. 46): x ← x - f_i + G_i² s + G_i z."""
  f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - f
  noise = normal(rng, x.shape)
  return x_mean + batch_mul(G, noise), x_mean


@register_predictor('ancestral_sampling')
def ancestral_sampling(sde, score_fn, rng, x, t, probability_flow=False):
  """Ancestral sampling of the SDE's discrete chain: SMLD (Eq. 47) or DDPM (Eq. 7 of Ho et al.)."""
  noise = normal(rng, x.shape)
  x_mean, std = sde.ancestral_step(x, t, score_fn(x, t))
  return x_mean + batch_mul(std, noise), x_mean


@register_predictor('none', nfe=0)
def no_predictor(sde, score_fn, rng, x, t, probability_flow=False):
  return x, x


# ---------------------------------------------------------------- correctors

def _norm_per_example(x):
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


def _langevin_steps(step_size_fn, sde, score_fn, rng, x, t, n_steps):
  """n_steps of x ← x + ε s(x) + sqrt(2ε) z, with ε = step_size_fn(score, noise)."""
  x_mean = x
  for step_rng in jax.random.split(rng, n_steps):  # n_steps is small: unrolled
    grad = score_fn(x, t)
    noise = normal(step_rng, x.shape)
    step_size = step_size_fn(grad, noise)
    x_mean = x + batch_mul(step_size, grad)
    x = x_mean + batch_mul(jnp.sqrt(2 * step_size), noise)
  return x, x_mean


@register_corrector('langevin')
def langevin(sde, score_fn, rng, x, t, snr, n_steps):
  """Langevin MCMC with step size 2 α (snr ‖z‖ / ‖s‖)², norms averaged over the batch (Alg. 4–5)."""
  alpha = sde.langevin_alpha(t)

  def step_size(grad, noise):
    grad_norm = jnp.mean(_norm_per_example(grad))
    noise_norm = jnp.mean(_norm_per_example(noise))
    return (snr * noise_norm / grad_norm) ** 2 * 2 * alpha

  return _langevin_steps(step_size, sde, score_fn, rng, x, t, n_steps)


@register_corrector('ald')
def annealed_langevin_dynamics(sde, score_fn, rng, x, t, snr, n_steps):
  """Annealed Langevin dynamics of NCSN: step size 2 α (snr σ(t))²."""
  alpha = sde.langevin_alpha(t)
  std = sde.marginal_prob(x, t)[1]
  return _langevin_steps(lambda grad, noise: (snr * std) ** 2 * 2 * alpha,
                         sde, score_fn, rng, x, t, n_steps)


@register_corrector('none', nfe_per_step=0)
def no_corrector(sde, score_fn, rng, x, t, snr, n_steps):
  return x, x


# ---------------------------------------------------------------- the sampler

def check_predictor(sde, predictor, probability_flow):
  """Refuses predictor settings that have no meaning for `sde`."""
  if predictor == 'ancestral_sampling' and not sde.has_ancestral_chain:
    able = ' and '.join(cls.__name__ for cls in sde_lib.SDES.values() if cls.has_ancestral_chain)
    raise ValueError(f'ancestral_sampling is defined for {able} only, not {type(sde).__name__}; '
                     'use sampling.predictor=reverse_diffusion or euler_maruyama.')
  if predictor == 'ancestral_sampling' and probability_flow:
    raise ValueError('ancestral_sampling has no probability-flow form; use reverse_diffusion or euler_maruyama.')


@register_sampler('pc', aliases={'n_steps': 'n_steps_each'})
def get_pc_sampler(sde, shape, predictor='reverse_diffusion', corrector='langevin', inverse_scaler=None,
                   snr=0.16, n_steps=1, probability_flow=False, continuous=False, denoise=True, eps=1e-3,
                   sharding=None):
  """Predictor–corrector sampler over N = sde.N uniform steps from T down to eps.

  Each step applies the corrector, then the predictor, as the official code does.
  With `denoise`, the noise-free mean of the last predictor step is returned.
  `continuous` is accepted for compatibility; times are always passed as floats.
  With `sharding`, the batch is split across devices; batch means (Langevin) stay global.
  eps None (or <= 0) is the SDE's default; `sampler(rng, score_fn, z=None)` starts from z at T when given.
  """
  predictor, corrector = predictor.lower(), corrector.lower()
  predictor_fn, predictor_nfe = get_predictor(predictor)
  corrector_fn, corrector_nfe = get_corrector(corrector)
  check_predictor(sde, predictor, probability_flow)
  eps = resolve_eps(sde, eps)
  inverse_scaler = inverse_scaler or (lambda x: x)
  nfe = sde.N * (predictor_nfe + corrector_nfe * n_steps)

  @eqx.filter_jit
  def sampler(rng, score_fn, z=None):
    rng, prior_rng = jax.random.split(rng)
    x = shard_batch(sde.prior_sampling(prior_rng, shape) if z is None else z, sharding)
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def step(carry, inputs):
      x, _ = carry
      t, step_rng = inputs
      corrector_rng, predictor_rng = jax.random.split(step_rng)
      vec_t = jnp.full((x.shape[0],), t)
      x, x_mean = corrector_fn(sde, score_fn, corrector_rng, x, vec_t, snr, n_steps)
      x, x_mean = predictor_fn(sde, score_fn, predictor_rng, x, vec_t, probability_flow)
      return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), (timesteps, jax.random.split(rng, sde.N)))
    return inverse_scaler(x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

  return sampler
