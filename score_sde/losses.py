"""Training objectives (Eq. 7 of Song et al. 2021, and the discrete SMLD/DDPM losses) and the step.

A loss is `loss_fn(rng, params, batch) -> scalar`, with `batch['image']` of shape (batch, ...).
"""
import flax
import jax
import jax.numpy as jnp
import optax

from score_sde import sde_lib
from score_sde.models import utils as mutils
from score_sde.sde_lib import batch_mul


def _reduce_per_example(x, reduce_mean):
  x = x.reshape(x.shape[0], -1)
  return jnp.mean(x, axis=-1) if reduce_mean else 0.5 * jnp.sum(x, axis=-1)


def get_sde_loss_fn(sde, model, train, reduce_mean=True, continuous=True, likelihood_weighting=False,
                    eps=1e-5):
  """Denoising score matching over t ~ U(eps, T).

  λ(t) = σ(t)² by default: ‖σ s(x̃, t) + z‖²; with likelihood_weighting, λ(t) = g(t)²
  (Theorem 1 of Song et al. 2021b): g² ‖s(x̃, t) + z/σ‖².
  """
  def loss_fn(rng, params, batch):
    score_fn = mutils.get_score_fn(sde, model, {'params': params}, train=train, continuous=continuous)
    data = batch['image']
    t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    t = jax.random.uniform(t_rng, (data.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, data.shape)
    mean, std = sde.marginal_prob(data, t)
    perturbed = mean + batch_mul(std, z)
    score = score_fn(perturbed, t, rng=dropout_rng)
    if likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(data), t)[1] ** 2
      losses = _reduce_per_example((score + batch_mul(1. / std, z)) ** 2, reduce_mean) * g2
    else:
      losses = _reduce_per_example((batch_mul(std, score) + z) ** 2, reduce_mean)
    return jnp.mean(losses)

  return loss_fn


def _apply_model(model, params, x, labels, train, rng):
  return model.apply({'params': params}, x, labels, train=train, rngs={'dropout': rng} if train else {})


def get_smld_loss_fn(vesde, model, train, reduce_mean=False):
  """NCSN objective over the discrete noise levels σ_1 > ... > σ_N, weighted by σ²."""
  sigmas_descending = vesde.discrete_sigmas[::-1]

  def loss_fn(rng, params, batch):
    data = batch['image']
    label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (data.shape[0],), 0, vesde.N)
    sigmas = sigmas_descending[labels]
    noise = batch_mul(sigmas, jax.random.normal(noise_rng, data.shape))
    score = _apply_model(model, params, data + noise, labels, train, dropout_rng)
    target = -batch_mul(1. / sigmas ** 2, noise)
    return jnp.mean(_reduce_per_example((score - target) ** 2, reduce_mean) * sigmas ** 2)

  return loss_fn


def get_ddpm_loss_fn(vpsde, model, train, reduce_mean=True):
  """DDPM objective: ‖ε_θ(sqrt(ᾱ_i) x + sqrt(1-ᾱ_i) ε, i) - ε‖² over integer steps i."""
  def loss_fn(rng, params, batch):
    data = batch['image']
    label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (data.shape[0],), 0, vpsde.N)
    noise = jax.random.normal(noise_rng, data.shape)
    perturbed = (batch_mul(vpsde.sqrt_alphas_cumprod[labels], data)
                 + batch_mul(vpsde.sqrt_1m_alphas_cumprod[labels], noise))
    predicted = _apply_model(model, params, perturbed, labels, train, dropout_rng)
    return jnp.mean(_reduce_per_example((predicted - noise) ** 2, reduce_mean))

  return loss_fn


def get_loss_fn(sde, model, train, reduce_mean=False, continuous=True, likelihood_weighting=False, eps=1e-5):
  """The continuous SDE loss, or the discrete SMLD (VE) or DDPM (VP) loss."""
  if continuous:
    return get_sde_loss_fn(sde, model, train, reduce_mean, True, likelihood_weighting, eps)
  if likelihood_weighting:
    raise ValueError('Likelihood weighting is not supported for discrete SMLD/DDPM training; '
                     'set training.continuous=True or training.likelihood_weighting=False.')
  discrete = {'smld': get_smld_loss_fn, 'ddpm': get_ddpm_loss_fn}
  if sde.discrete_objective not in discrete:
    known = ' and '.join(f'{cls.__name__} ({cls.discrete_objective.upper()})'
                         for cls in sde_lib.SDES.values() if cls.discrete_objective)
    raise ValueError(f'Discrete training is defined for {known}, not {type(sde).__name__}; '
                     'set training.continuous=True.')
  return discrete[sde.discrete_objective](sde, model, train, reduce_mean)


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
                likelihood_weighting=False, ema_rate=0.9999, eps=1e-5, axis_name=None):
  """One step: `step_fn(state, batch) -> (state, metrics)`.

  Under `jit` with sharded inputs, the mean over the global batch already averages the
  gradient across devices. Under `pmap`/`shard_map`, pass `axis_name` to pmean them.
  """
  loss_fn = get_loss_fn(sde, model, train, reduce_mean, continuous, likelihood_weighting, eps)

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
