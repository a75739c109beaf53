"""A noise-conditional classifier p_t(y | x(t)) for the quickstart digits (Appendix I.1 of Song et al. 2021).

It is trained on digits noised by the quickstart's SDE (VP, β ∈ [0.1, 20]): x(t) = α(t) x(0) + σ(t) z with
x(0) the 8×8 digits centred to [-1, 1] and t ~ U(eps, 1). It sees x(t) and the noise std σ(t), as the
official CIFAR-10 classifier sees the VE noise scale. Its gradient ∇ log p_t(y | x) guides the
unconditional sampler (controllable.classifier_guided_score).

The weights ship as assets/noisy_digits_classifier.npz; regenerate them with
`python experiments/train_noisy_digits_classifier.py`.
"""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import sde_lib
from score_sde.models import npz_weights

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / 'assets' / 'noisy_digits_classifier.npz'
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def quickstart_sde():
  """The SDE of configs/quickstart.py (training.sde='vpsde' with the default β range)."""
  return sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=1000)


class NoisyDigitsClassifier(nn.Module):
  """(x(t) (n, 8, 8, 1), σ(t) (n,)) → logits (n, 10).

  conv 3×3 ×32 → conv 3×3 ×32 → avg-pool 2 → conv 3×3 ×64 → global mean → dense 10, swish throughout;
  an embedding of log σ is added after every convolution (as the score networks add theirs).
  """
  channels: int = 32
  embed: int = 64

  @nn.compact
  def __call__(self, x, sigma):
    temb = nn.swish(nn.Dense(self.embed)(jnp.log(sigma)[:, None]))
    temb = nn.swish(nn.Dense(self.embed)(temb))

    def conv(x, channels):
      x = nn.Conv(channels, (3, 3))(x) + nn.Dense(channels)(temb)[:, None, None, :]
      return nn.swish(x)

    x = conv(x, self.channels)
    x = conv(x, self.channels)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = conv(x, 2 * self.channels)
    return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


def get_log_prob_fn(variables=None, sde=None, centered=True):
  """log_prob_fn(x, t) -> (n, 10) log p_t(y | x): the form controllable.classifier_guided_score takes.

  x is the state of any SDE, x = α x(0) + s z with x(0) in [-1, 1] (centered; else [0, 1], mapped first).
  The classifier saw VP states (α² + σ² = 1); x / sqrt(α² + s²) is the VP state of the same signal-to-noise
  ratio, with σ = s / sqrt(α² + s²), so one classifier serves every SDE (for VP the factor is 1).
  """
  variables = load() if variables is None else variables
  sde = quickstart_sde() if sde is None else sde
  model = NoisyDigitsClassifier()

  def log_prob_fn(x, t):
    alpha, s = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)
    alpha = alpha[:, 0]
    if not centered:  # α x0 + s z with x0 in [0, 1] → α (2 x0 - 1) + 2 s z
      x, s = 2. * x - sde_lib.batch_mul(alpha, jnp.ones_like(x)), 2. * s
    norm = jnp.sqrt(alpha ** 2 + s ** 2)
    return jax.nn.log_softmax(model.apply(variables, sde_lib.batch_mul(1. / norm, x), s / norm), axis=-1)
  return log_prob_fn


# ---------------------------------------------------------------- training

def noised(sde, images, t, z):
  """x(t) = α(t) x(0) + σ(t) z and σ(t)."""
  mean, std = sde.marginal_prob(images, t)
  return mean + sde_lib.batch_mul(std, z), std


def train(split, seed=0, steps=3000, batch_size=128, learning_rate=3e-3, weight_decay=1e-4, eps=1e-3):
  """Adam(W) with cosine decay on the training part of `split` (datasets.digits_split(), as the digits
  classifier of the metrics).

  Minibatches, times and noise all come from numpy default_rng(seed), so the weights are reproducible.
  Returns (variables, {t: held-out accuracy}).
  """
  x_train, y_train, x_test, y_test = split
  x_train, x_test = 2. * x_train - 1., 2. * x_test - 1.
  sde = quickstart_sde()
  model = NoisyDigitsClassifier()
  rng = np.random.default_rng(seed)
  params = _init_params(model, rng)
  optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
  opt_state = jax.jit(optimizer.init)(params)

  @jax.jit
  def step(params, opt_state, x0, y, t, z):
    x, sigma = noised(sde, x0, t, z)

    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x, sigma), y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    idx = rng.integers(0, len(x_train), batch_size)
    t = rng.uniform(eps, 1., batch_size).astype(np.float32)
    z = rng.normal(size=(batch_size,) + IMAGE_SHAPE).astype(np.float32)
    params, opt_state = step(params, opt_state, x_train[idx], y_train[idx], t, z)
  variables = {'params': params}
  return variables, held_out_accuracy(variables, x_test, y_test, sde)


def held_out_accuracy(variables, x_test, y_test, sde, times=(1e-3, 0.25, 0.5, 0.75, 1.), seed=1):
  """Accuracy on the held-out digits (centred) noised to each t, one fixed noise draw per t."""
  rng = np.random.default_rng(seed)
  apply = jax.jit(NoisyDigitsClassifier().apply)
  accuracy = {}
  for t in times:
    z = rng.normal(size=x_test.shape).astype(np.float32)
    x, sigma = noised(sde, jnp.asarray(x_test), jnp.full((len(x_test),), t, jnp.float32), z)
    accuracy[t] = float(np.mean(np.asarray(apply(variables, x, sigma)).argmax(1) == y_test))
  return accuracy


def _init_params(model, rng):
  """LeCun-normal kernels and zero biases drawn with numpy (no threefry compile)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + IMAGE_SHAPE), jnp.ones((1,)))

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return jnp.zeros(leaf.shape, jnp.float32)
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes['params'])


def save(variables, path=WEIGHTS):
  npz_weights.save(variables, path)


def load(path=WEIGHTS):
  """The shipped variables (or those at `path`)."""
  return npz_weights.load(WEIGHTS if path is None else path, 'python experiments/train_noisy_digits_classifier.py')


__all__ = ['NoisyDigitsClassifier', 'get_log_prob_fn', 'train', 'load', 'save', 'WEIGHTS']
