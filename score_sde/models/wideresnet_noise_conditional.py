"""The official noise-conditional CIFAR-10 classifier p_t(y | x(t)) (Appendix I.1 of Song et al. 2021).

A Wide ResNet (Zagoruyko & Komodakis) of pre-activation blocks with GroupNorm, conditioned on the VE noise
scale σ: Gaussian Fourier features of log σ (128 frequencies, scale 16) → Dense 512 → swish → Dense 512,
projected into every block after its first convolution. The input is standardised per image (mean 0,
std ≥ 1/sqrt(D)) after the CIFAR-10 channel mean/std normalisation done by `get_log_prob_fn`.
The official one is WideResnet(blocks_per_group=4, channel_multiplier=10, num_outputs=10) on 32×32×3.

Parameter names are those of the official Flax module, so `from_official_flax` reads its checkpoints
(a msgpack tree of params, as flax.training.checkpoints writes it).
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import convert, layers, utils

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
EMBED_FREQUENCIES = 128

# Kaiming normal (fan_out, gain 2) for the convolutions, U(-1/sqrt(out), 1/sqrt(out)) for the logits.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def logits_init(key, shape, dtype=jnp.float32):
  limit = 1. / np.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def group_norm(x, name):
  return layers.group_norm(x, name=name, epsilon=1e-5)


def shortcut(block_x, x):
  """Identity, or average pooling to the block's resolution and zero channels appended."""
  if block_x.shape[-1] == x.shape[-1]:
    return x
  stride = x.shape[-2] // block_x.shape[-2]
  x = nn.avg_pool(x, (stride, stride), (stride, stride))
  return jnp.pad(x, [(0, 0)] * 3 + [(0, block_x.shape[-1] - x.shape[-1])])


class FourierFeatures(nn.Module):
  """[sin 2π W s, cos 2π W s] with fixed W ~ N(0, scale²)."""
  size: int = EMBED_FREQUENCIES
  scale: float = 16.

  @nn.compact
  def __call__(self, s):
    W = jax.lax.stop_gradient(self.param('W', nn.initializers.normal(self.scale), (self.size,)))
    proj = s[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class WideResnetBlock(nn.Module):
  """norm → relu → conv (stride) → + Dense(temb) → norm → relu → conv, plus the shortcut.

  The first block of the first group normalises before the branch split (activate_before_residual).
  """
  channels: int
  strides: tuple = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    if self.activate_before_residual:
      x = nn.relu(group_norm(x, 'init_bn'))
      h = x
    else:
      h = nn.relu(group_norm(x, 'init_bn'))
    h = nn.Conv(self.channels, (3, 3), self.strides, padding='SAME', use_bias=False, kernel_init=conv_init,
                name='conv1')(h)
    h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
    h = nn.relu(group_norm(h, 'bn_2'))
    h = nn.Conv(self.channels, (3, 3), padding='SAME', use_bias=False, kernel_init=conv_init, name='conv2')(h)
    return h + shortcut(h, x)


class WideResnetGroup(nn.Module):
  blocks_per_group: int
  channels: int
  strides: tuple = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    for i in range(self.blocks_per_group):
      x = WideResnetBlock(self.channels, self.strides if i == 0 else (1, 1),
                          self.activate_before_residual and i == 0)(x, temb)
    return x


@utils.register_model(name='wideresnet_noise_conditional')
class WideResnet(nn.Module):
  """(x (n, H, W, C) normalised images, σ (n,) VE noise scales) → logits (n, num_outputs)."""
  config: Any = None
  blocks_per_group: int = 4
  channel_multiplier: int = 10
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, sigmas, train=False):
    D = np.prod(x.shape[1:])
    std = jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), 1. / np.sqrt(D))
    x = (x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)) / std
    temb = FourierFeatures(name='GaussianFourierProjection_0')(jnp.log(sigmas))
    temb = nn.Dense(4 * EMBED_FREQUENCIES)(temb)
    temb = nn.Dense(4 * EMBED_FREQUENCIES)(nn.swish(temb))
    x = nn.Conv(16, (3, 3), padding='SAME', use_bias=False, kernel_init=conv_init, name='init_conv')(x)
    k = self.channel_multiplier
    x = WideResnetGroup(self.blocks_per_group, 16 * k, activate_before_residual=True)(x, temb)
    x = WideResnetGroup(self.blocks_per_group, 32 * k, (2, 2))(x, temb)
    x = WideResnetGroup(self.blocks_per_group, 64 * k, (2, 2))(x, temb)
    x = nn.relu(group_norm(x, 'pre-pool-bn'))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_outputs, kernel_init=logits_init)(x)


def abstract_params(model, image_shape=(32, 32, 3)):
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.ones((1,))))['params']


def from_official_flax(path_or_bytes, model=None, image_shape=(32, 32, 3)):
  """An official classifier checkpoint (msgpack params tree; a file, its bytes or a dict) -> {'params': ...}.

  The official code restores it with `checkpoints.restore_checkpoint(ckpt_path, init_params)`, so the file
  holds the params tree itself; a tree under 'params' is accepted too. Names and shapes are checked.
  """
  model = model or WideResnet()
  restored = convert.read_flax_checkpoint(path_or_bytes)
  if 'params' in restored and 'init_conv' not in restored:
    restored = restored['params']
  official = flax.traverse_util.flatten_dict(restored, sep='/')
  shapes = flax.traverse_util.flatten_dict(abstract_params(model, image_shape), sep='/')
  problems = [f'no official parameter for {p}' for p in shapes if p not in official]
  problems += [f'unexpected parameter {p}' for p in official if p not in shapes]
  problems += [f'{p} has shape {np.shape(official[p])}, expected {tuple(s.shape)}'
               for p, s in shapes.items() if p in official and np.shape(official[p]) != tuple(s.shape)]
  if problems:
    raise ValueError(f'Not a WideResnet(blocks_per_group={model.blocks_per_group}, channel_multiplier='
                     f'{model.channel_multiplier}, num_outputs={model.num_outputs}) checkpoint: '
                     + '; '.join(problems[:5]) + (f' (+{len(problems) - 5} more)' if len(problems) > 5 else ''))
  params = {p: jnp.asarray(np.asarray(official[p], np.float32)) for p in shapes}
  return {'params': flax.traverse_util.unflatten_dict(params, sep='/')}


def get_log_prob_fn(variables, sde, centered=False, model=None):
  """log_prob_fn(x, t) -> (n, num_outputs) log p_t(y | x) for any SDE.

  The classifier was trained on VE-perturbed CIFAR-10 in [0, 1], x0 + σ z. A state x = α x0 + s z of any SDE
  is that with x0 + (s/α) z = x / α, so it receives x / α (mapped to [0, 1] when centered) and σ = s / α.
  """
  model = model or WideResnet()
  mean, std = jnp.asarray(CIFAR10_MEAN), jnp.asarray(CIFAR10_STD)

  def log_prob_fn(x, t):
    alpha, s = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)
    alpha = alpha[:, 0]
    x = x / alpha[:, None, None, None]
    sigma = s / alpha
    if centered:
      x, sigma = (x + 1.) / 2., sigma / 2.
    logits = model.apply(variables, (x - mean) / std, sigma, train=False)
    return jax.nn.log_softmax(logits, axis=-1)
  return log_prob_fn
