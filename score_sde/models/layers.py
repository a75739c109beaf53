"""Layers shared by the score networks."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """Sinusoidal embedding of DDPM: [sin(l·f_i), cos(l·f_i)], f_i = 10000^(-i/(half-1))."""
  assert timesteps.ndim == 1, timesteps.shape
  half_dim = embedding_dim // 2
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -(math.log(max_positions) / (half_dim - 1)))
  angles = timesteps[:, None].astype(jnp.float32) * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class GaussianFourierProjection(nn.Module):
  """[sin(2π x W), cos(2π x W)] with fixed random W ~ N(0, scale²)."""
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    W = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


def class_embedding(config, class_labels, batch_size, features):
  """Each example's learned class embedding (batch, features), or None for an unconditional network.

  model.num_classes = K > 0: a table of K + 1 rows (k-diffusion's and DiT's; EDM's Linear with bias on one-hot
  labels is the same thing), row K the null label, which class_labels=None selects for the whole batch and
  training.label_dropout trains. Call it inside a compact module: the table is its submodule 'class_embed', a
  name of its own, so that every other layer keeps its automatic name and an unconditional network its tree.
  """
  num_classes = config.model.num_classes
  if num_classes == 0:
    if class_labels is not None:
      raise ValueError('class_labels given to an unconditional network (model.num_classes=0).')
    return None
  if num_classes < 0:
    raise ValueError('model.num_classes=-1 (the classes of the data) is resolved by run.py; set the number of '
                     'classes when you build a network yourself.')
  if class_labels is None:
    class_labels = jnp.full((batch_size,), num_classes, jnp.int32)
  return nn.Embed(num_classes + 1, features, name='class_embed')(jnp.asarray(class_labels, jnp.int32))


NONLINEARITIES = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': lambda x: nn.leaky_relu(x, negative_slope=0.2),
    'swish': nn.swish,
}


def get_act(config):
  name = config.model.nonlinearity.lower()
  if name not in NONLINEARITIES:
    raise ValueError(f'Unknown nonlinearity {config.model.nonlinearity!r}; known: {sorted(NONLINEARITIES)}.')
  return NONLINEARITIES[name]


# ---------------------------------------------------------------------------
# Shared by the DDPM / NCSN++ / NCSNv2 families (added for the score networks).
# ---------------------------------------------------------------------------

def default_init(scale=1.):
  """DDPM initialisation: variance_scaling(scale, 'fan_avg', 'uniform'); scale 0 becomes 1e-10."""
  return jax.nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def _conv(x, out_ch, size, stride, bias, dilation, init_scale, dtype):
  """`nn.Conv` computing in `dtype` (e.g. bfloat16: model.conv_dtype) with float32 parameters and output."""
  conv = nn.Conv(out_ch, (size, size), strides=(stride, stride), padding='SAME', use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=jax.nn.initializers.zeros, dtype=dtype)
  return conv(x).astype(x.dtype)


def ddpm_conv3x3(x, out_ch, stride=1, bias=True, dilation=1, init_scale=1., dtype=None):
  """3x3 'SAME' convolution with DDPM initialisation (an `nn.Conv` named Conv_k in the caller)."""
  return _conv(x, out_ch, 3, stride, bias, dilation, init_scale, dtype)


def ddpm_conv1x1(x, out_ch, stride=1, bias=True, init_scale=1., dtype=None):
  """1x1 convolution with DDPM initialisation."""
  return _conv(x, out_ch, 1, stride, bias, 1, init_scale, dtype)


class NIN(nn.Module):
  """Per-pixel linear map over channels ("network in network"): W is (in, out), b is (out,)."""
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    W = self.param('W', default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param('b', jax.nn.initializers.zeros, (self.num_units,))
    y = x.reshape(-1, x.shape[-1]) @ W + b  # a 2-D matmul: no transposes in the backward
    return y.reshape(x.shape[:-1] + (self.num_units,))


def get_sigmas(config):
  """The descending SMLD noise table exp(linspace(log σ_max, log σ_min, num_scales)) (float64 numpy)."""
  import numpy as np
  m = config.model
  return np.exp(np.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


class GroupNorm(nn.Module):
  """GroupNorm over channels-last x: y = (x - mean_g) / sqrt(var_g + eps) * scale + bias.

  mean_g and var_g = E[x^2] - E[x]^2 are taken over the pixels and the channels of each group.
  The sums run over the pixels first, per channel (vectorised over channels), and then over the
  few channels of a group: on CPU, 5-10% of a DDPM++ training step faster than reducing a
  (B, H, W, G, C/G) view at once as flax.linen.GroupNorm does. Same parameters (scale, bias).
  """
  num_groups: int
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    batch, channels, groups = x.shape[0], x.shape[-1], self.num_groups
    per_group = channels // groups
    scale = self.param('scale', jax.nn.initializers.ones, (channels,))
    bias = self.param('bias', jax.nn.initializers.zeros, (channels,))
    pixels = tuple(range(1, x.ndim - 1))
    count = per_group * math.prod(x.shape[a] for a in pixels)
    mean = jnp.sum(x, axis=pixels).reshape(batch, groups, per_group).sum(-1) / count
    mean_sq = jnp.sum(x * x, axis=pixels).reshape(batch, groups, per_group).sum(-1) / count
    inv_std = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.) + self.epsilon)
    mul = jnp.repeat(inv_std, per_group, axis=1) * scale  # (B, C)
    add = bias - jnp.repeat(mean, per_group, axis=1) * mul
    shape = (batch,) + (1,) * len(pixels) + (channels,)
    return x * mul.reshape(shape) + add.reshape(shape)


def group_norm(x, num_groups=None, name=None, epsilon=1e-6):
  """GroupNorm with ε = 1e-6 (flax and the official models); min(C/4, 32) groups by default."""
  groups = num_groups or min(x.shape[-1] // 4, 32)
  return GroupNorm(num_groups=groups, epsilon=epsilon, name=name)(x)


class Dropout(nn.Module):
  """Dropout (rng collection 'dropout') whose mask costs half the random bits of flax's: each 32-bit
  threefry word gives two 16-bit uniforms. The keep probability is rounded to a multiple of 2^-16
  (0.9 -> 0.899994) and kept values are divided by that probability, so E[output] = input exactly."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic):
    threshold = round((1. - self.rate) * 2 ** 16)
    if deterministic or threshold >= 2 ** 16:
      return x
    if threshold <= 0:
      return jnp.zeros_like(x)
    bits = jax.random.bits(self.make_rng('dropout'), ((x.size + 1) // 2,), jnp.uint32)
    uniform16 = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:x.size].reshape(x.shape)
    return jnp.where(uniform16 < threshold, x / (threshold / 2 ** 16), 0.)
