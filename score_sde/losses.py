"""Training objectives (Eq. 7 of Song et al. 2021, and the discrete SMLD/DDPM losses) and the step.

A loss is `loss_fn(rng, params, batch) -> scalar`, with `batch['image']` of shape (batch, ...), and for a
class-conditional model (model.num_classes > 0) `batch['label']` (batch,) int32 (`training_labels`).
"""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import sde_lib
from score_sde.models import preconditioning
from score_sde.models import utils as mutils
from score_sde.registry import Registry
from score_sde.sde_lib import batch_mul


def _reduce_per_example(x, reduce_mean):
  x = x.reshape(x.shape[0], -1)
  return jnp.mean(x, axis=-1) if reduce_mean else 0.5 * jnp.sum(x, axis=-1)


# Folded into a loss's key for the label dropout draw, so that the loss's own splits of its key stay as they are.
LABEL_DROPOUT_KEY = 0x1abe1


def training_labels(model, batch, rng, label_dropout=0.):
  """The labels a class-conditional model trains on, or None for an unconditional model.

  batch['label'], each replaced by the null label K = model.num_classes with probability label_dropout
  (classifier-free guidance, Ho & Salimans 2021), drawn from fold_in(rng, LABEL_DROPOUT_KEY).
  """
  num_classes = mutils.model_field(model, 'num_classes', 0)
  if not num_classes:
    return None
  if 'label' not in batch:
    raise ValueError(f"a class-conditional model (model.num_classes={num_classes}) trains on batches with 'label'; "
                     'use data with labels or set model.num_classes=0.')
  labels = jnp.asarray(batch['label'], jnp.int32)
  if label_dropout > 0:
    drop = jax.random.bernoulli(jax.random.fold_in(rng, LABEL_DROPOUT_KEY), label_dropout, labels.shape)
    labels = jnp.where(drop, num_classes, labels)
  return labels


def loss_batch(model, batch, scaler):
  """What a loss reads from a data batch: the scaled images, and the labels when the model is class-conditional
  (an unconditional model's batch is the images alone, as it always was)."""
  if mutils.model_field(model, 'num_classes', 0):
    return {'image': scaler(batch['image']), 'label': batch['label']}
  return {'image': scaler(batch['image'])}


def _score(score_fn, x, t, labels, rng):
  """score_fn at (x, t), given the labels of a class-conditional model (unconditional: score_fn(x, t))."""
  return score_fn(x, t, rng=rng) if labels is None else score_fn(x, t, labels, rng=rng)


def check_importance_weighting(sde, continuous, likelihood_weighting, eps):
  """Z = ∫_eps^T g²/σ² dt for importance-weighted training, or a one-sentence ValueError saying what to change."""
  if not likelihood_weighting:
    raise ValueError('training.importance_weighting=True needs training.likelihood_weighting=True; set it, '
                     'or set training.importance_weighting=False.')
  if not continuous:
    raise ValueError('training.importance_weighting=True needs continuous training; set training.continuous=True '
                     'or training.importance_weighting=False.')
  return sde_lib.importance_sampling_norm(sde, eps, 'set training.importance_weighting=False')


def get_sde_loss_fn(sde, model, train, reduce_mean=True, continuous=True, likelihood_weighting=False,
                    eps=1e-5, importance_weighting=False, label_dropout=0.):
  """Denoising score matching over t ~ U(eps, T).

  λ(t) = σ(t)² by default: ‖σ s(x̃, t) + z‖²; with likelihood_weighting, λ(t) = g(t)²
  (Theorem 1 of Song et al. 2021b): g² ‖s(x̃, t) + z/σ‖².
  With importance_weighting too (score_flow), t ~ p(t) = g²/(σ² Z) on [eps, T] by the SDE's inverse CDF and the
  loss is Z/(T - eps) ‖σ s(x̃, t) + z‖²: the same mean as the likelihood-weighted loss, lower variance.
  """
  if importance_weighting:
    weight = check_importance_weighting(sde, continuous, likelihood_weighting, eps) / (sde.T - eps)

  def loss_fn(rng, params, batch):
    score_fn = mutils.get_score_fn(sde, model, {'params': params}, train=train, continuous=continuous)
    data = batch['image']
    t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    if importance_weighting:
      t = sde.importance_sampling_t(jax.random.uniform(t_rng, (data.shape[0],)), eps)
    else:
      t = jax.random.uniform(t_rng, (data.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, data.shape)
    mean, std = sde.marginal_prob(data, t)
    perturbed = mean + batch_mul(std, z)
    score = _score(score_fn, perturbed, t, training_labels(model, batch, rng, label_dropout), dropout_rng)
    if importance_weighting:
      losses = _reduce_per_example((batch_mul(std, score) + z) ** 2, reduce_mean) * weight
    elif likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(data), t)[1] ** 2
      losses = _reduce_per_example((score + batch_mul(1. / std, z)) ** 2, reduce_mean) * g2
    else:
      losses = _reduce_per_example((batch_mul(std, score) + z) ** 2, reduce_mean)
    return jnp.mean(losses)

  return loss_fn


def _apply_model(model, params, x, labels, train, rng, class_labels=None):
  """The network at the noise index `labels` (an unconditional network is called as the official code)."""
  rngs = {'dropout': rng} if train else {}
  if class_labels is None:
    return model.apply({'params': params}, x, labels, train=train, rngs=rngs)
  return model.apply({'params': params}, x, labels, train=train, rngs=rngs, class_labels=class_labels)


def get_smld_loss_fn(vesde, model, train, reduce_mean=False, label_dropout=0.):
  """NCSN objective over the discrete noise levels σ_1 > ... > σ_N, weighted by σ²."""
  sigmas_descending = vesde.discrete_sigmas[::-1]

  def loss_fn(rng, params, batch):
    data = batch['image']
    label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (data.shape[0],), 0, vesde.N)
    sigmas = sigmas_descending[labels]
    noise = batch_mul(sigmas, jax.random.normal(noise_rng, data.shape))
    score = _apply_model(model, params, data + noise, labels, train, dropout_rng,
                         training_labels(model, batch, rng, label_dropout))
    target = -batch_mul(1. / sigmas ** 2, noise)
    return jnp.mean(_reduce_per_example((score - target) ** 2, reduce_mean) * sigmas ** 2)

  return loss_fn


def get_ddpm_loss_fn(vpsde, model, train, reduce_mean=True, label_dropout=0.):
  """DDPM objective: ‖ε_θ(sqrt(ᾱ_i) x + sqrt(1-ᾱ_i) ε, i) - ε‖² over integer steps i."""
  def loss_fn(rng, params, batch):
    data = batch['image']
    label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (data.shape[0],), 0, vpsde.N)
    noise = jax.random.normal(noise_rng, data.shape)
    perturbed = (batch_mul(vpsde.sqrt_alphas_cumprod[labels], data)
                 + batch_mul(vpsde.sqrt_1m_alphas_cumprod[labels], noise))
    predicted = _apply_model(model, params, perturbed, labels, train, dropout_rng,
                             training_labels(model, batch, rng, label_dropout))
    return jnp.mean(_reduce_per_example((predicted - noise) ** 2, reduce_mean))

  return loss_fn


# training.loss -> factory(sde, model, train, reduce_mean, continuous, likelihood_weighting, eps, importance_weighting,
#                          p_mean, p_std, sigma_data, label_dropout) -> loss_fn; each factory reads the options it has.
LOSSES = Registry('training.loss')


def get_loss_fn(sde, model, train, reduce_mean=False, continuous=True, likelihood_weighting=False, eps=1e-5,
                importance_weighting=False, loss='dsm', p_mean=-1.2, p_std=1.2, sigma_data=None, label_dropout=0.):
  """loss 'dsm': the continuous SDE loss, or the discrete SMLD (VE) or DDPM (VP) loss; 'edm': EDM's loss.
  label_dropout: class-conditional models train on the null label with this probability (training_labels)."""
  check_loss_options(loss, continuous, likelihood_weighting, importance_weighting)
  return LOSSES.get(loss)(sde, model, train, reduce_mean=reduce_mean, continuous=continuous,
                          likelihood_weighting=likelihood_weighting, eps=eps, importance_weighting=importance_weighting,
                          p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, label_dropout=label_dropout)


@LOSSES.register('dsm')
def get_dsm_loss_fn(sde, model, train, reduce_mean=False, continuous=True, likelihood_weighting=False, eps=1e-5,
                    importance_weighting=False, label_dropout=0., **_):
  """The official loss: denoising score matching in continuous time, or the SMLD (VE) / DDPM (VP) chain's."""
  if importance_weighting:
    check_importance_weighting(sde, continuous, likelihood_weighting, eps)
  if continuous:
    return get_sde_loss_fn(sde, model, train, reduce_mean, True, likelihood_weighting, eps,
                           importance_weighting=importance_weighting, label_dropout=label_dropout)
  if likelihood_weighting:
    raise ValueError('Likelihood weighting is not supported for discrete SMLD/DDPM training; '
                     'set training.continuous=True or training.likelihood_weighting=False.')
  discrete = {'smld': get_smld_loss_fn, 'ddpm': get_ddpm_loss_fn}
  if sde.discrete_objective not in discrete:
    known = ' and '.join(f'{cls.__name__} ({cls.discrete_objective.upper()})'
                         for _, cls in sde_lib.SDES.items() if cls.discrete_objective)
    raise ValueError(f'Discrete training is defined for {known}, not {type(sde).__name__}; '
                     'set training.continuous=True.')
  return discrete[sde.discrete_objective](sde, model, train, reduce_mean, label_dropout=label_dropout)


# ---------------------------------------------------------------- EDM's loss (Karras et al. 2022, eq. 8)

def edm_log_sigma_range(sde, eps=1e-5):
  """[ln σ̃(eps), ln σ̃(T)] as Python floats: the noise levels the SDE spans on [eps, T] (σ̃ = σ/α = e^{-λ})."""
  with jax.ensure_compile_time_eval():  # constants, also while a loss is being traced
    log_sigma = np.asarray(-sde.log_snr(jnp.asarray([eps, sde.T], jnp.float32)), np.float64)
  return float(log_sigma[0]), float(log_sigma[1])


def _normal_cdf(x):
  return 0.5 * math.erfc(-x / math.sqrt(2.))


def sample_edm_time(rng, sde, n, p_mean=-1.2, p_std=1.2, eps=1e-5):
  """(t, ln σ̃) of n draws: ln σ̃ ~ N(p_mean, p_std²) truncated to the SDE's range, t = t(λ = -ln σ̃).

  Inverse CDF: u ~ U(Φ(a), Φ(b)) with a, b the standardised ends, ln σ̃ = p_mean + p_std Φ⁻¹(u). The clips only
  catch float32 rounding at the ends (Φ(b) can round to 1).
  """
  lo, hi = edm_log_sigma_range(sde, eps)
  cdf_lo, cdf_hi = _normal_cdf((lo - p_mean) / p_std), _normal_cdf((hi - p_mean) / p_std)
  u = jax.random.uniform(rng, (n,), minval=cdf_lo, maxval=cdf_hi)
  log_sigma = jnp.clip(p_mean + p_std * jax.scipy.special.ndtri(u), lo, hi)
  t = jnp.clip(sde.t_from_log_snr(-log_sigma), eps, sde.T)
  return t, log_sigma


def edm_losses(score_fn, sde, data, t, z, sigma_data=0.5, reduce_mean=True, rng=None, labels=None):
  """Per-example λ(σ̃) ‖D(x̃; σ̃) − x_0‖² at x_t = α x_0 + σ z, λ = (σ̃² + σ_d²)/(σ̃ σ_d)².

  Evaluated through the score seam as (σ̃² + σ_d²)/σ_d² ‖σ s + z‖²: D = (x + σ² s)/α = x_0 + σ̃ (σ s + z), so
  this is the same number for every parametrization, and x_0 is never subtracted from D ≈ x_0. Reduced over the
  dimensions like the official losses (mean with reduce_mean, else half the sum). labels: of a class-conditional
  score_fn(x, t, labels).
  """
  alpha, sigma = sde.marginal_coeffs(t)
  sigma_tilde = sigma / alpha
  perturbed = batch_mul(alpha, data) + batch_mul(sigma, z)
  score = _score(score_fn, perturbed, t, labels, rng)
  weight = (sigma_tilde ** 2 + sigma_data ** 2) / sigma_data ** 2  # λ(σ̃) σ̃²
  return _reduce_per_example((batch_mul(sigma, score) + z) ** 2, reduce_mean) * weight


@LOSSES.register('edm')
def get_edm_loss_fn(sde, model, train, reduce_mean=True, p_mean=-1.2, p_std=1.2, sigma_data=None, eps=1e-5,
                    label_dropout=0., **_):
  """EDM's loss: ln σ̃ ~ N(p_mean, p_std²) truncated to [σ̃(eps), σ̃(T)], t = t(-ln σ̃), weight λ(σ̃) on D vs x_0.

  sigma_data None is the model's model.sigma_data (0.5 for a model without a config).
  """
  check_edm_range(sde, p_mean, p_std, eps)
  if sigma_data is None:
    sigma_data = mutils.model_field(model, 'sigma_data', 0.5)

  def loss_fn(rng, params, batch):
    score_fn = mutils.get_score_fn(sde, model, {'params': params}, train=train, continuous=True)
    data = batch['image']
    t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    t, _ = sample_edm_time(t_rng, sde, data.shape[0], p_mean, p_std, eps)
    z = jax.random.normal(z_rng, data.shape)
    labels = training_labels(model, batch, rng, label_dropout)
    return jnp.mean(edm_losses(score_fn, sde, data, t, z, sigma_data, reduce_mean, rng=dropout_rng, labels=labels))

  return loss_fn


def check_edm_range(sde, p_mean, p_std, eps=1e-5):
  """ValueError unless [σ̃(eps), σ̃(T)] holds at least half of N(p_mean, p_std²) in ln σ̃; names the side that cuts."""
  lo, hi = edm_log_sigma_range(sde, eps)
  below, above = _normal_cdf((lo - p_mean) / p_std), 1. - _normal_cdf((hi - p_mean) / p_std)
  if 1. - below - above >= 0.5:
    return
  ends = ('model.sigma_min/model.sigma_max' if hasattr(sde, 'sigma_min') else 'model.beta_min/model.beta_max')
  sides = []
  if below > 0.01:
    sides.append(f'{below:.0%} lies below σ̃(eps)={math.exp(lo):.3g}')
  if above > 0.01:
    sides.append(f'{above:.0%} above σ̃(T)={math.exp(hi):.3g}')
  raise ValueError(f"training.loss='edm' draws ln σ̃ ~ N({p_mean}, {p_std}²) but {type(sde).__name__} spans only "
                   f'σ̃ in [{math.exp(lo):.3g}, {math.exp(hi):.3g}], {1. - below - above:.0%} of it '
                   f"({' and '.join(sides)}); widen {ends} or move training.p_mean/training.p_std into the range.")


def check_loss_options(loss, continuous, likelihood_weighting=False, importance_weighting=False):
  """ValueError (one sentence, what to change) for an unknown loss or one the weighting options cannot modify."""
  LOSSES.get(loss)
  if loss != 'edm':
    return
  if not continuous:
    raise ValueError("training.loss='edm' is a continuous-time loss; set training.continuous=True "
                     "(or training.loss='dsm' for the discrete SMLD/DDPM losses).")
  if likelihood_weighting or importance_weighting:
    which = 'likelihood_weighting' if likelihood_weighting else 'importance_weighting'
    raise ValueError(f"training.loss='edm' has its own weighting λ(σ̃) and time distribution; set "
                     f"training.{which}=False (or training.loss='dsm').")


def check_loss_config(config, eps=1e-5):
  """Every loss and parametrization problem of `config` as a one-line ValueError; None when it can train.

  eps is the loss's smallest t (get_loss_fn's, 1e-5 as in the official code).
  """
  tc, m = config.training, config.model
  check_loss_options(tc.loss, tc.continuous, tc.likelihood_weighting, tc.importance_weighting)
  preconditioning.check_parametrization(m.parametrization, m.sigma_data)
  if tc.loss == 'edm':
    check_edm_range(sde_lib.get_sde(config), tc.p_mean, tc.p_std, eps)
  if m.parametrization != 'edm':
    return
  if not tc.continuous:
    raise ValueError("model.parametrization='edm' wraps the network at the score seam, which the discrete "
                     "SMLD/DDPM losses bypass; set training.continuous=True (or model.parametrization='score').")
  if m.scale_by_sigma:
    raise ValueError("model.parametrization='edm' scales the network output by c_out itself; set "
                     'model.scale_by_sigma=False.')
  preconditioning.noise_input_kind(config)  # a network that takes a continuous noise level
  takes_images = getattr(mutils.get_model_class(m.name), 'takes_images', True)
  if takes_images and not config.data.centered:
    raise ValueError(f"model.parametrization='edm' feeds {m.name} the scaled input c_in x̃, which the network "
                     'would shift by its own [0, 1] -> [-1, 1] map, and model.sigma_data is the spread of centred '
                     'data; set data.centered=True.')


def loss_options(config):
  """The keywords of get_loss_fn / get_step_fn that config.training (and model.sigma_data) set: one place for
  the train loop, the held-out loss of eval mode, and validation."""
  tc = config.training
  return dict(reduce_mean=tc.reduce_mean, continuous=tc.continuous, likelihood_weighting=tc.likelihood_weighting,
              importance_weighting=tc.importance_weighting, loss=tc.loss, p_mean=tc.p_mean, p_std=tc.p_std,
              sigma_data=config.model.sigma_data, label_dropout=tc.label_dropout)


def learning_rate_schedule(config):
  """step -> learning rate: linear warm-up from 0 over optim.warmup steps, then optim.lr."""
  optim = config.optim
  return optax.linear_schedule(0., optim.lr, optim.warmup) if optim.warmup > 0 else optax.constant_schedule(optim.lr)


def get_optimizer(config):
  """Adam with linear warmup and global-norm clipping, from `config.optim`."""
  optim = config.optim
  if optim.optimizer != 'Adam':
    raise ValueError(f'Unknown optimizer {optim.optimizer!r}; known: [\'Adam\'].')
  learning_rate = learning_rate_schedule(config) if optim.warmup > 0 else optim.lr
  adam = (optax.adamw(learning_rate, b1=optim.beta1, b2=0.999, eps=optim.eps, weight_decay=optim.weight_decay)
          if optim.weight_decay else optax.adam(learning_rate, b1=optim.beta1, b2=0.999, eps=optim.eps))
  if optim.grad_clip >= 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adam)
  return adam


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  params_ema: dict
  opt_state: optax.OptState
  rng: jax.Array


def init_train_state(rng, params, optimizer):
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, params_ema=params,
                    opt_state=optimizer.init(params), rng=rng)


def get_step_fn(sde, model, train, optimizer=None, reduce_mean=False, continuous=True,
                likelihood_weighting=False, ema_rate=0.9999, eps=1e-5, axis_name=None, importance_weighting=False,
                loss='dsm', p_mean=-1.2, p_std=1.2, sigma_data=None, label_dropout=0.):
  """One step: `step_fn(state, batch) -> (state, metrics)`.

  Under `jit` with sharded inputs, the mean over the global batch already averages the
  gradient across devices. Under `pmap`/`shard_map`, pass `axis_name` to pmean them.
  """
  loss_fn = get_loss_fn(sde, model, train, reduce_mean, continuous, likelihood_weighting, eps,
                        importance_weighting=importance_weighting, loss=loss, p_mean=p_mean, p_std=p_std,
                        sigma_data=sigma_data, label_dropout=label_dropout)

  def step_fn(state, batch):
    rng, step_rng = jax.random.split(state.rng)
    if not train:
      loss = loss_fn(step_rng, state.params_ema, batch)
      if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
      return state.replace(rng=rng), {'loss': loss}
    loss, grads = jax.value_and_grad(loss_fn, argnums=1)(step_rng, state.params, batch)
    if axis_name is not None:
      loss, grads = jax.lax.pmean((loss, grads), axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params_ema = optax.incremental_update(params, state.params_ema, 1. - ema_rate)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, params_ema=params_ema,
                         opt_state=opt_state, rng=rng), metrics

  return step_fn
