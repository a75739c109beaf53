"""Normalisation layers of NCSN / NCSNv2, as in the original PyTorch code (ermongroup/ncsn, ncsnv2).

Inputs are NHWC. Instance statistics use the biased variance with ε = 1e-5 (torch
InstanceNorm2d); the spread of the channel means in InstanceNorm++ and the variance of
VarianceNorm use the unbiased estimate (torch.var), as the original networks do.
Parameters have the original names (alpha, gamma, beta, embed) and shape (C,).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_EPS = 1e-5


def _normal_around_one(key, shape, dtype=jnp.float32):
  return 1. + 0.02 * jax.random.normal(key, shape, dtype)


def _instance_norm(x):
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.var(x, axis=(1, 2), keepdims=True)
  return (x - mean) / jnp.sqrt(var + _EPS)


def _standardised_means(x):
  """Channel means, standardised across channels (the '++' of InstanceNorm++): (B, 1, 1, C)."""
  means = jnp.mean(x, axis=(1, 2))
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, ddof=1, keepdims=True)
  return ((means - m) / jnp.sqrt(v + _EPS))[:, None, None, :]


def _variance_norm(x):
  return x / jnp.sqrt(jnp.var(x, axis=(1, 2), ddof=1, keepdims=True) + _EPS)


class InstanceNorm2d(nn.Module):
  """torch.nn.InstanceNorm2d(C) as used by NCSNv2: no affine parameters."""
  bias: bool = True

  def __call__(self, x):
    return _instance_norm(x)


class InstanceNorm2dPlus(nn.Module):
  bias: bool = True

  @nn.compact
  def __call__(self, x):
    C = x.shape[-1]
    alpha = self.param('alpha', _normal_around_one, (C,))
    gamma = self.param('gamma', _normal_around_one, (C,))
    out = gamma * (_instance_norm(x) + _standardised_means(x) * alpha)
    if self.bias:
      out = out + self.param('beta', jax.nn.initializers.zeros, (C,))
    return out


class VarianceNorm2d(nn.Module):
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    return self.param('alpha', _normal_around_one, (x.shape[-1],)) * _variance_norm(x)


def _embed(num_classes, features, scale_features, uniform=False):
  """Per-class table; the first `scale_features` columns start near 1, the rest at 0."""
  def init(key, shape, dtype=jnp.float32):
    scale = (jax.random.uniform(key, (shape[0], scale_features), dtype) if uniform
             else _normal_around_one(key, (shape[0], scale_features), dtype))
    return jnp.concatenate([scale, jnp.zeros((shape[0], shape[1] - scale_features), dtype)], axis=1)
  return nn.Embed(num_classes, features, embedding_init=init, name='embed')


class ConditionalInstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ whose gamma, alpha, beta are looked up per noise level (NCSNv1)."""
  num_classes: int
  bias: bool = True

  @nn.compact
  def __call__(self, x, y):
    C = x.shape[-1]
    n = 3 if self.bias else 2
    params = _embed(self.num_classes, n * C, 2 * C)(y)[:, None, None, :]
    gamma, alpha = params[..., :C], params[..., C:2 * C]
    out = gamma * (_instance_norm(x) + _standardised_means(x) * alpha)
    return out + params[..., 2 * C:] if self.bias else out


class ConditionalInstanceNorm2d(nn.Module):
  num_classes: int
  bias: bool = True

  @nn.compact
  def __call__(self, x, y):
    C = x.shape[-1]
    params = _embed(self.num_classes, (2 if self.bias else 1) * C, C, uniform=True)(y)[:, None, None, :]
    out = params[..., :C] * _instance_norm(x)
    return out + params[..., C:] if self.bias else out


class ConditionalVarianceNorm2d(nn.Module):
  num_classes: int
  bias: bool = False

  @nn.compact
  def __call__(self, x, y):
    gamma = _embed(self.num_classes, x.shape[-1], x.shape[-1])(y)[:, None, None, :]
    return gamma * _variance_norm(x)


_PLAIN = {'InstanceNorm': InstanceNorm2d, 'InstanceNorm++': InstanceNorm2dPlus,
          'VarianceNorm': VarianceNorm2d}
_CONDITIONAL = {'InstanceNorm': ConditionalInstanceNorm2d, 'InstanceNorm++': ConditionalInstanceNorm2dPlus,
                'VarianceNorm': ConditionalVarianceNorm2d}


def get_normalization(config, conditional=False):
  """The normaliser class named by config.model.normalization (noise-conditional ones for NCSNv1)."""
  name = config.model.normalization
  table = _CONDITIONAL if conditional else _PLAIN
  if name not in table:
    raise ValueError(f'Unknown normalization {name!r} for NCSN models; known: {sorted(table)}.')
  if conditional:
    return functools.partial(table[name], num_classes=config.model.num_scales)
  return table[name]
