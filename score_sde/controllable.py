"""Controllable generation with an unconditional score model (Section 5 and Appendix I of Song et al. 2021).

* Inpainting and colorization (Appendix I.2-I.3): run a PC sampler, and after every predictor and
  corrector half-step put the known part back as the data noised to time t, x_known(t) ~ p_0t(. | data).
  Colorization does this in a decoupled space, an orthogonal map of RGB in which the gray image is one channel.
* Class-conditional sampling (Appendix I.1): the conditional score is
  ∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x), with a noise-conditional classifier p_t(y | x).
  `classifier_guided_score` returns that sum as a score function, so every sampler takes it.
* Classifier-free guidance (Ho & Salimans 2021) with a class-conditional model s(x, t, y), y = None the null label:
  `classifier_free_guided_score` returns s(x,t,∅) + γ (s(x,t,y) − s(x,t,∅)), γ = 1 + w, optionally only on an
  interval of noise levels (Kynkäänniemi et al. 2024). The two guidances compose: a guided score is a score.

Samplers return (x, nfe), like `sampling.get_pc_sampler`, and run its PC loop (`sampling.pc_loop`). All Gaussian
draws except the prior's come from the `randn_like(rng, x)` argument, in the official order (per step: corrector
noise, known-part noise, predictor noise, known-part noise). `z=` gives the prior draw at T (VE: already scaled
by σ_max).
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sampling
from score_sde.sde_lib import batch_mul

# ---------------------------------------------------------------- decoupled colour space
# The official orthonormal M (columns: gray direction (1,1,1)/√3 and two directions orthogonal to it).
# decouple(x) = x @ M puts the gray level (times √3) in channel 0; couple inverts it.
COLOR_M = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                    [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                    [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], np.float32)
COLOR_INV_M = np.linalg.inv(COLOR_M.astype(np.float64)).astype(np.float32)


def decouple(x):
  return jnp.einsum('...i,ij->...j', x, COLOR_M)


def couple(y):
  return jnp.einsum('...i,ij->...j', y, COLOR_INV_M)


def gray_mask(x):
  """1 on the gray channel of the decoupled space, 0 on the two colour channels."""
  return jnp.concatenate([jnp.ones_like(x[..., :1]), jnp.zeros_like(x[..., 1:])], axis=-1)


def _identity(x):
  return x


# ---------------------------------------------------------------- the replacement rule

def known_part_update(update_fn, sde, rng, x, t, data, mask, to_space=_identity, from_space=_identity,
                      official_quirks=True, randn_like=sampling.standard_randn_like):
  """One predictor or corrector half-step followed by the replacement of the known part.

  In the space y = to_space(x), where `mask` is 1 on the known coordinates and `data` holds them:
    y ← y_upd (1 - mask) + (mean + std z) mask,  with mean, std = p_0t(. | data).
  The official x_mean is rebuilt from the new, noised x (so denoising cleans only the known part);
  with official_quirks=False the unknown part of x_mean is the step's own noise-free mean.
  """
  update_rng, known_rng = jax.random.split(rng)
  x, x_mean = update_fn(update_rng, x, t)
  mean, std = sde.marginal_prob(data, t)
  known = mean + batch_mul(std, randn_like(known_rng, x))
  x = from_space(to_space(x) * (1. - mask) + known * mask)
  free = x if official_quirks else x_mean
  x_mean = from_space(to_space(free) * (1. - mask) + mean * mask)
  return x, x_mean


def _pc_with_known_part(sde, x, score_fn, rng, data, mask, to_space, from_space, eps, options, randn_like):
  """The PC loop of Alg. 1-3, each half-step followed by the replacement of the known part."""
  predict, correct, _ = sampling.pc_updates(sde, score_fn, options['predictor'], options['corrector'], options['snr'],
                                            options['n_steps'], options['probability_flow'], randn_like)

  def with_known_part(update):
    return lambda rng, x, t: known_part_update(update, sde, rng, x, t, data, mask, to_space, from_space,
                                               options['official_quirks'], randn_like)

  return sampling.pc_loop(sde, with_known_part(predict), with_known_part(correct), rng, x, eps)


def _options(sde, predictor, corrector, snr, n_steps, probability_flow, official_quirks):
  sampling.check_predictor(sde, predictor, probability_flow)
  _, _, nfe_per_step = sampling.pc_updates(sde, None, predictor, corrector, snr, n_steps, probability_flow)
  options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                 probability_flow=probability_flow, official_quirks=official_quirks)
  return options, sde.N * nfe_per_step


def _prior(sde, rng, shape, z):
  return sde.prior_sampling(rng, shape) if z is None else z


# ---------------------------------------------------------------- inpainting

def get_pc_inpainter(sde, shape, predictor='reverse_diffusion', corrector='langevin', snr=0.16, n_steps=1,
                     probability_flow=False, denoise=True, eps=1e-5, inverse_scaler=None, official_quirks=True,
                     randn_like=sampling.standard_randn_like):
  """inpainter(rng, score_fn, data, mask, z=None) -> (x, nfe); mask is 1 where data is known.

  Starts from the known pixels with the prior elsewhere (eps = 1e-5 is the official default).
  """
  options, nfe = _options(sde, predictor, corrector, snr, n_steps, probability_flow, official_quirks)
  inverse_scaler = inverse_scaler or _identity

  @eqx.filter_jit
  def inpainter(rng, score_fn, data, mask, z=None):
    data = jnp.broadcast_to(data, shape)
    mask = jnp.broadcast_to(mask, shape).astype(data.dtype)
    rng, prior_rng = jax.random.split(rng)
    x = data * mask + _prior(sde, prior_rng, shape, z) * (1. - mask)
    x, x_mean = _pc_with_known_part(sde, x, score_fn, rng, data, mask, _identity, _identity, eps, options,
                                    randn_like)
    return inverse_scaler(x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

  return inpainter


# ---------------------------------------------------------------- colorization

def get_pc_colorizer(sde, shape, predictor='reverse_diffusion', corrector='langevin', snr=0.16, n_steps=1,
                     probability_flow=False, denoise=True, eps=1e-5, inverse_scaler=None, official_quirks=True,
                     randn_like=sampling.standard_randn_like):
  """colorizer(rng, score_fn, gray, z=None) -> (x, nfe); gray: RGB images whose three channels are equal.

  The gray channel of the decoupled space is known; the two colour channels are sampled.
  The official first sample masks the prior in RGB space (its R channel is zeroed and its
  decoupled gray part is added to the gray image); official_quirks=False masks it in the decoupled space.
  """
  if shape[-1] != 3:
    raise ValueError(f'Colorization needs 3-channel (RGB) images; the shape is {tuple(shape)}.')
  options, nfe = _options(sde, predictor, corrector, snr, n_steps, probability_flow, official_quirks)
  inverse_scaler = inverse_scaler or _identity

  @eqx.filter_jit
  def colorizer(rng, score_fn, gray, z=None):
    gray = jnp.broadcast_to(gray, shape)
    mask = gray_mask(gray)
    known = decouple(gray)
    rng, prior_rng = jax.random.split(rng)
    prior = _prior(sde, prior_rng, shape, z)
    free = decouple(prior * (1. - mask)) if official_quirks else decouple(prior) * (1. - mask)
    x = couple(known * mask + free)
    x, x_mean = _pc_with_known_part(sde, x, score_fn, rng, known, mask, decouple, couple, eps, options,
                                    randn_like)
    return inverse_scaler(x_mean if denoise else x), jnp.asarray(nfe, jnp.int32)

  return colorizer


def to_gray(images):
  """RGB (…, 3) -> the channel mean repeated on three channels, the colorizer's input."""
  return jnp.repeat(jnp.mean(images, axis=-1, keepdims=True), 3, axis=-1)


# ---------------------------------------------------------------- class guidance

def _guided_score(score_fn, log_prob_fn, labels, scale, x, t):
  def log_prob_of_labels(x):
    return jnp.sum(jnp.take_along_axis(log_prob_fn(x, t), labels[:, None], axis=1))
  return score_fn(x, t) + scale * jax.grad(log_prob_of_labels)(x)


def classifier_guided_score(score_fn, log_prob_fn, labels, scale=1.):
  """∇ log p_t(x) + scale ∇ log p_t(y | x) as a score function (x, t) -> array shaped like x.

  log_prob_fn(x, t) -> (batch, num_classes) log p_t(y | x) of a noise-conditional classifier;
  labels (batch,) int. Each example's gradient involves only its own log-probability.
  A pytree (jax.tree_util.Partial): new labels or parameters reuse compiled samplers.
  """
  labels = jnp.asarray(labels, jnp.int32)
  return jax.tree_util.Partial(_guided_score, score_fn, log_prob_fn, labels, jnp.asarray(scale, jnp.float32))


# ---------------------------------------------------------------- classifier-free guidance

def _conditional_score(cond_score_fn, labels, x, t):
  return cond_score_fn(x, t, labels)


def conditional_score(cond_score_fn, labels=None):
  """s(x, t, labels) of a class-conditional score function as a plain score_fn(x, t); labels None is the null
  label (the model's unconditional score). A pytree: new labels reuse compiled samplers and likelihoods."""
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)
  return jax.tree_util.Partial(_conditional_score, cond_score_fn, labels)


def _noise_level(sde, t):
  """σ̃(t) = σ(t)/α(t), the noise level of x_t / α (EDM's σ)."""
  alpha, sigma = sde.marginal_coeffs(t)
  return sigma / alpha


def _cfg_score(cond_score_fn, labels, scale, interval, sde, x, t):
  cond = cond_score_fn(x, t, labels)
  if interval is None:
    guided = jnp.ones(t.shape, bool)
  else:
    noise_level = _noise_level(sde, t)
    guided = (interval[0] < noise_level) & (noise_level <= interval[1])
  # The unconditional call only where it changes the result (γ ≠ 1, inside the interval): lax.cond keeps one
  # compiled sampler for every γ and interval, and samplers call the score with one t for the whole batch.
  uncond = jax.lax.cond((scale != 1.) & jnp.any(guided), lambda: cond_score_fn(x, t, None), lambda: cond)
  mix = uncond + scale * (cond - uncond)
  return jnp.where(guided.reshape(guided.shape + (1,) * (x.ndim - 1)), mix, cond)


def classifier_free_guided_score(cond_score_fn, labels, guidance_scale, interval=None, sde=None):
  """Classifier-free guidance as a score function (x, t) -> array shaped like x:

      s̃(x, t) = s(x, t, ∅) + γ (s(x, t, y) − s(x, t, ∅)) = s(x, t, y) + (γ − 1) ∇ log p_t(y | x)

  cond_score_fn(x, t, labels=None): a class-conditional score, None the null label (∅); labels (batch,) int.
  γ = guidance_scale = 1 + w (Ho & Salimans write w): 1 is plain conditional sampling, 0 unconditional, > 1
  sharper classes. interval=(σ_lo, σ_hi) in σ̃ = σ/α (needs `sde`): guidance only where σ_lo < σ̃(t) ≤ σ_hi, the
  conditional score alone elsewhere (Kynkäänniemi et al. 2024). The guided score is that of q_t ∝
  p_t(x|y)^γ p_t(x)^(1-γ), which is not the diffusion of one distribution: ODE and SDE samplers draw different ones.
  A pytree (jax.tree_util.Partial): new labels, γ or interval reuse compiled samplers; whether there is an interval
  at all is the one thing that recompiles. Each call costs one or two network evaluations (one at γ = 1 and outside
  the interval).
  """
  if interval is not None:
    if sde is None:
      raise ValueError('a guidance interval is in noise levels σ/α of an SDE; pass sde= as well.')
    interval = jnp.asarray(interval, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  return jax.tree_util.Partial(_cfg_score, cond_score_fn, labels, jnp.asarray(guidance_scale, jnp.float32),
                               interval, sde)
