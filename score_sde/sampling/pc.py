"""Predictor–corrector sampling (Alg. 1–3 of Song et al. 2021): the predictors, the correctors, and the PC loop.

A predictor is `predictor(sde, score_fn, rng, x, t, probability_flow, randn_like) -> (x, x_mean)` making
`nfe` score calls; a corrector is `corrector(sde, score_fn, rng, x, t, snr, n_steps, randn_like) -> (x, x_mean)`
making n_steps * `nfe_per_step`. `randn_like(rng, x)` is the Gaussian noise source (N(0, I) shaped like x);
every sampler takes it as an argument, so that a test can feed the official code's stored draws.
"""
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde import sde_lib
from score_sde.registry import Registry
from score_sde.sampling.common import resolve_eps, shard_batch, standard_randn_like
from score_sde.sampling.registry import register_sampler
from score_sde.sde_lib import batch_mul

PREDICTORS = Registry('sampling.predictor')  # info: nfe, score evaluations per step
CORRECTORS = Registry('sampling.corrector')  # info: nfe, score evaluations per corrector step


def register_predictor(name, nfe=1):
  return PREDICTORS.register(name, nfe=nfe)


def register_corrector(name, nfe_per_step=1):
  return CORRECTORS.register(name, nfe=nfe_per_step)


def predictor_names():
  return PREDICTORS.names()


def corrector_names():
  return CORRECTORS.names()


# ---------------------------------------------------------------- predictors

@register_predictor('euler_maruyama')
def euler_maruyama(sde, score_fn, rng, x, t, probability_flow=False, randn_like=standard_randn_like):
  """x ← x - [f - g² s] Δt + g sqrt(Δt) z, stepping backwards by Δt = T/N."""
  dt = -sde.T / sde.N  # -1/N for the paper's SDEs (T = 1); the EDM SDE has T = σ_max
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  noise = randn_like(rng, x)
  return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), noise), x_mean


@register_predictor('reverse_diffusion')
def reverse_diffusion(sde, score_fn, rng, x, t, probability_flow=False, randn_like=standard_randn_like):
  """The reverse of the forward discretisation (Eq. 46): x ← x - f_i + G_i² s + G_i z."""
  f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - f
  noise = randn_like(rng, x)
  return x_mean + batch_mul(G, noise), x_mean


@register_predictor('ancestral_sampling')
def ancestral_sampling(sde, score_fn, rng, x, t, probability_flow=False, randn_like=standard_randn_like):
  """Ancestral sampling of the SDE's discrete chain: SMLD (Eq. 47) or DDPM (Eq. 7 of Ho et al.)."""
  noise = randn_like(rng, x)
  x_mean, std = sde.ancestral_step(x, t, score_fn(x, t))
  return x_mean + batch_mul(std, noise), x_mean


@register_predictor('none', nfe=0)
def no_predictor(sde, score_fn, rng, x, t, probability_flow=False, randn_like=standard_randn_like):
  return x, x


# ---------------------------------------------------------------- correctors

def _norm_per_example(x):
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


def _langevin_steps(step_size_fn, sde, score_fn, rng, x, t, n_steps, randn_like):
  """n_steps of x ← x + ε s(x) + sqrt(2ε) z, with ε = step_size_fn(score, noise)."""
  x_mean = x
  for step_rng in jax.random.split(rng, n_steps):  # n_steps is small: unrolled
    grad = score_fn(x, t)
    noise = randn_like(step_rng, x)
    step_size = step_size_fn(grad, noise)
    x_mean = x + batch_mul(step_size, grad)
    x = x_mean + batch_mul(jnp.sqrt(2 * step_size), noise)
  return x, x_mean


@register_corrector('langevin')
def langevin(sde, score_fn, rng, x, t, snr, n_steps, randn_like=standard_randn_like):
  """Langevin MCMC with step size 2 α (snr ‖z‖ / ‖s‖)², norms averaged over the batch (Alg. 4–5)."""
  alpha = sde.langevin_alpha(t)

  def step_size(grad, noise):
    grad_norm = jnp.mean(_norm_per_example(grad))
    noise_norm = jnp.mean(_norm_per_example(noise))
    return (snr * noise_norm / grad_norm) ** 2 * 2 * alpha

  return _langevin_steps(step_size, sde, score_fn, rng, x, t, n_steps, randn_like)


@register_corrector('ald')
def annealed_langevin_dynamics(sde, score_fn, rng, x, t, snr, n_steps, randn_like=standard_randn_like):
  """Annealed Langevin dynamics of NCSN: step size 2 α (snr σ(t))²."""
  alpha = sde.langevin_alpha(t)
  std = sde.marginal_prob(x, t)[1]
  return _langevin_steps(lambda grad, noise: (snr * std) ** 2 * 2 * alpha,
                         sde, score_fn, rng, x, t, n_steps, randn_like)


@register_corrector('none', nfe_per_step=0)
def no_corrector(sde, score_fn, rng, x, t, snr, n_steps, randn_like=standard_randn_like):
  return x, x


# ---------------------------------------------------------------- the sampler

def check_predictor(sde, predictor, probability_flow):
  """Refuses predictor settings that have no meaning for `sde`."""
  if predictor == 'ancestral_sampling' and not sde.has_ancestral_chain:
    able = ' and '.join(cls.__name__ for _, cls in sde_lib.SDES.items() if cls.has_ancestral_chain)
    raise ValueError(f'ancestral_sampling is defined for {able} only, not {type(sde).__name__}; '
                     'use sampling.predictor=reverse_diffusion or euler_maruyama.')
  if predictor == 'ancestral_sampling' and probability_flow:
    raise ValueError('ancestral_sampling has no probability-flow form; use reverse_diffusion or euler_maruyama.')


def pc_updates(sde, score_fn, predictor, corrector, snr, n_steps, probability_flow, randn_like=standard_randn_like):
  """The predictor and the corrector as `update(rng, x, t) -> (x, x_mean)`, and their score calls per step."""
  predictor_fn, corrector_fn = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
  nfe_per_step = PREDICTORS.info(predictor)['nfe'] + CORRECTORS.info(corrector)['nfe'] * n_steps
  predict = lambda rng, x, t: predictor_fn(sde, score_fn, rng, x, t, probability_flow, randn_like)
  correct = lambda rng, x, t: corrector_fn(sde, score_fn, rng, x, t, snr, n_steps, randn_like)
  return predict, correct, nfe_per_step


def pc_loop(sde, predict, correct, rng, x, eps):
  """Alg. 1–3: for t_i from T down to eps in N = sde.N uniform steps, the corrector, then the predictor.

  One lax.scan; returns (x, x_mean) of the last step. Controllable generation runs this same loop with
  updates that put the known part back after each half-step.
  """
  def step(carry, inputs):
    x, _ = carry
    t, step_rng = inputs
    corrector_rng, predictor_rng = jax.random.split(step_rng)
    vec_t = jnp.full((x.shape[0],), t)
    x, x_mean = correct(corrector_rng, x, vec_t)
    x, x_mean = predict(predictor_rng, x, vec_t)
    return (x, x_mean), None

  timesteps = jnp.linspace(sde.T, eps, sde.N)
  (x, x_mean), _ = jax.lax.scan(step, (x, x), (timesteps, jax.random.split(rng, sde.N)))
  return x, x_mean


@register_sampler('pc', aliases={'n_steps': 'n_steps_each'})
def get_pc_sampler(sde, shape, predictor='reverse_diffusion', corrector='langevin', inverse_scaler=None,
                   snr=0.16, n_steps=1, probability_flow=False, continuous=False, denoise=True, eps=1e-3,
                   sharding=None, randn_like=standard_randn_like):
  """Predictor–corrector sampler over N = sde.N uniform steps from T down to eps.

  Each step applies the corrector, then the predictor, as the official code does.
  With `denoise`, the noise-free mean of the last predictor step is returned.
  `continuous` is accepted for compatibility; times are always passed as floats.
  With `sharding`, the batch is split across devices; batch means (Langevin) stay global.
  eps None (or <= 0) is the SDE's default; `sampler(rng, score_fn, z=None)` starts from z at T when given.
  """
  predictor, corrector = predictor.lower(), corrector.lower()
  check_predictor(sde, predictor, probability_flow)
  eps = resolve_eps(sde, eps)
  inverse_scaler = inverse_scaler or (lambda x: x)
  nfe = sde.N * pc_updates(sde, None, predictor, corrector, snr, n_steps, probability_flow)[2]

  @eqx.filter_jit
  def sampler(rng, score_fn, z=None):
    rng, prior_rng = jax.random.split(rng)
    x = shard_batch(sde.prior_sampling(prior_rng, shape) if z is None else z, sharding)
    predict, correct, _ = pc_updates(sde, score_fn, predictor, corrector, snr, n_steps, probability_flow,
                                     randn_like)
    x, x_mean = pc_loop(sde, predict, correct, rng, x, eps)
    return inverse_scaler(x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

  return sampler
