"""NCSN (v1, Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020): dilated RefineNets.

These follow the ORIGINAL networks (ermongroup/ncsn, ermongroup/ncsnv2), not the
official JAX port: the third refine block of the 64px NCSNv2 is nf wide,
InstanceNorm++ uses the unbiased variance of the channel means, bilinear resizing
aligns corners, and dilated 3x3 convs pad by their dilation. Submodule names are
the original attribute names (res1_0/conv1, refine2/adapt_convs_0/1_1_conv, ...),
so an original state_dict maps by name (see convert.py). Init is PyTorch's default.
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde.models import layers
from score_sde.models.normalization import get_normalization
from score_sde.models.utils import register_model


def _torch_conv_init(kernel_size, in_ch):
  """PyTorch's default Conv2d init: kernel and bias ~ U(±1/sqrt(fan_in))."""
  bound = 1. / np.sqrt(in_ch * kernel_size * kernel_size)
  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return jax.nn.initializers.variance_scaling(1. / 3, 'fan_in', 'uniform'), bias_init


def ncsn_conv(x, out_ch, kernel_size=3, bias=True, dilation=1, name=None):
  """Stride-1 convolution padded to keep the size (padding = dilation * (k // 2))."""
  pad = dilation * (kernel_size // 2)
  kernel_init, bias_init = _torch_conv_init(kernel_size, x.shape[-1])
  return nn.Conv(out_ch, (kernel_size, kernel_size), padding=[(pad, pad), (pad, pad)],
                 kernel_dilation=(dilation, dilation), use_bias=bias,
                 kernel_init=kernel_init, bias_init=bias_init, name=name)(x)


def _norm(norm, x, y, name):
  module = norm(name=name)
  return module(x) if y is None else module(x, y)


def _mean_pool(x):
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.


def resize_bilinear_align_corners(x, size):
  """torch F.interpolate(mode='bilinear', align_corners=True) for NHWC x."""
  def matrix(n_in, n_out):
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1. - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return jnp.asarray(m, x.dtype)
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  x = jnp.einsum('oh,bhwc->bowc', matrix(x.shape[1], size[0]), x)
  return jnp.einsum('pw,bowc->bopc', matrix(x.shape[2], size[1]), x)


def _resize(x, size, interpolation):
  if interpolation == 'bilinear':
    return resize_bilinear_align_corners(x, size)
  if interpolation == 'nearest_neighbor':
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'nearest')
  raise ValueError(f'Unknown interpolation {interpolation!r}; known: bilinear, nearest_neighbor.')


class ConvMeanPool(nn.Module):
  output_dim: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    return _mean_pool(ncsn_conv(x, self.output_dim, self.kernel_size, name='conv'))


class ResidualBlock(nn.Module):
  """Pre-activation residual block; 'down' halves the size unless dilated (then it only widens)."""
  output_dim: int
  norm: Callable
  act: Callable
  resample: Optional[str] = None
  dilation: int = 1

  @nn.compact
  def __call__(self, x, y=None):
    in_dim, out_dim, d = x.shape[-1], self.output_dim, self.dilation
    h = self.act(_norm(self.norm, x, y, 'normalize1'))
    if self.resample == 'down':
      h = ncsn_conv(h, in_dim, dilation=d, name='conv1')
      h = self.act(_norm(self.norm, h, y, 'normalize2'))
      if d > 1:
        h = ncsn_conv(h, out_dim, dilation=d, name='conv2')
        shortcut = ncsn_conv(x, out_dim, dilation=d, name='shortcut')
      else:
        h = ConvMeanPool(out_dim, name='conv2')(h)
        shortcut = ConvMeanPool(out_dim, kernel_size=1, name='shortcut')(x)
    elif self.resample is None:
      h = ncsn_conv(h, out_dim, dilation=d, name='conv1')
      h = self.act(_norm(self.norm, h, y, 'normalize2'))
      h = ncsn_conv(h, out_dim, dilation=d, name='conv2')
      if out_dim == in_dim:
        shortcut = x
      else:
        shortcut = ncsn_conv(x, out_dim, 3 if d > 1 else 1, dilation=d, name='shortcut')
    else:
      raise ValueError(f'Unknown resample {self.resample!r}.')
    return h + shortcut


class RCUBlock(nn.Module):
  """Residual conv units: n_blocks x (n_stages x [norm?] -> act -> 3x3 conv without bias)."""
  features: int
  n_blocks: int
  n_stages: int
  act: Callable
  norm: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, y=None):
    for i in range(1, self.n_blocks + 1):
      residual = x
      for j in range(1, self.n_stages + 1):
        if self.norm is not None:
          x = _norm(self.norm, x, y, f'{i}_{j}_norm')
        x = ncsn_conv(self.act(x), self.features, bias=False, name=f'{i}_{j}_conv')
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: 5x5 max pool (NCSNv2) or [norm ->] 5x5 average pool (NCSNv1)."""
  features: int
  n_stages: int
  act: Callable
  norm: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, y=None):
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      if self.norm is None:
        path = nn.max_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
      else:
        path = _norm(self.norm, path, y, f'norms_{i}')
        path = nn.avg_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)), count_include_pad=True)
      path = ncsn_conv(path, self.features, bias=False, name=f'convs_{i}')
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: [norm ->] 3x3 conv each input, resize to `shape`, sum."""
  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'
  norm: Optional[Callable] = None

  @nn.compact
  def __call__(self, xs, y=None):
    total = 0.
    for i, h in enumerate(xs):
      if self.norm is not None:
        h = _norm(self.norm, h, y, f'norms_{i}')
      h = ncsn_conv(h, self.features, name=f'convs_{i}')
      total = total + _resize(h, self.shape, self.interpolation)
    return total


class RefineBlock(nn.Module):
  output_shape: Sequence[int]
  features: int
  act: Callable
  interpolation: str = 'bilinear'
  norm: Optional[Callable] = None  # set for the noise-conditional NCSNv1 blocks
  end: bool = False

  @nn.compact
  def __call__(self, xs, y=None):
    hs = [RCUBlock(x.shape[-1], 2, 2, self.act, self.norm, name=f'adapt_convs_{i}')(x, y)
          for i, x in enumerate(xs)]
    if len(hs) > 1:
      h = MSFBlock(self.output_shape, self.features, self.interpolation, self.norm, name='msf')(hs, y)
    else:
      h = hs[0]
    h = CRPBlock(self.features, 2, self.act, self.norm, name='crp')(h, y)
    return RCUBlock(self.features, 3 if self.end else 1, 2, self.act, self.norm, name='output_convs')(h, y)


class _RefineNet(nn.Module):
  """A dilated ResNet encoder (stages of two residual blocks) and a RefineNet decoder.

  STAGES: (name, width multiplier, dilation); every stage but the first starts with a
  'down' block. REFINES: (name, width multiplier), deepest first, one per stage.
  With model.num_classes > 0, the class embedding (layers.class_embedding; class_labels None = the null label)
  enters as a conditioning input: a per-channel bias added to the first convolution's output.
  """
  config: ml_collections.ConfigDict
  STAGES = ()
  REFINES = ()
  CONDITIONAL = False
  takes_class_labels = True  # model.num_classes > 0: class_labels=

  @nn.compact
  def __call__(self, x, labels, train=False, class_labels=None):
    m = self.config.model
    nf, act = m.nf, layers.get_act(self.config)
    norm = get_normalization(self.config, conditional=self.CONDITIONAL)
    y = labels.astype(jnp.int32) if self.CONDITIONAL else None
    interpolation = getattr(m, 'interpolation', 'bilinear')

    h = x if self.config.data.centered else 2 * x - 1.
    h = ncsn_conv(h, nf, name='begin_conv')
    class_emb = layers.class_embedding(self.config, class_labels, x.shape[0], nf)
    if class_emb is not None:
      h = h + class_emb[:, None, None, :]
    skips = []
    for k, (name, mult, dilation) in enumerate(self.STAGES):
      h = ResidualBlock(mult * nf, norm, act, None if k == 0 else 'down', dilation, name=f'{name}_0')(h, y)
      h = ResidualBlock(mult * nf, norm, act, None, dilation, name=f'{name}_1')(h, y)
      skips.append(h)

    ref = None
    for k, (name, mult) in enumerate(self.REFINES):
      skip = skips[-1 - k]
      inputs = [skip] if ref is None else [skip, ref]
      ref = RefineBlock(skip.shape[1:3], mult * nf, act, interpolation,
                        norm if self.CONDITIONAL else None, end=(k == len(self.REFINES) - 1),
                        name=name)(inputs, y)

    h = ncsn_conv(act(_norm(norm, ref, y, 'normalizer')), x.shape[-1], name='end_conv')
    if m.scale_by_sigma:
      sigmas = jnp.asarray(layers.get_sigmas(self.config), jnp.float32)
      h = h / sigmas[labels.astype(jnp.int32)].reshape((-1,) + (1,) * (h.ndim - 1))
    return h


_STAGES_32 = (('res1', 1, 1), ('res2', 2, 1), ('res3', 2, 2), ('res4', 2, 4))


@register_model(name='ncsnv2_64')
class NCSNv2(_RefineNet):
  """NCSNv2 for images up to 64px (CIFAR-10, CelebA)."""
  STAGES = _STAGES_32
  REFINES = (('refine1', 2), ('refine2', 2), ('refine3', 1), ('refine4', 1))


@register_model(name='ncsn')
class NCSN(_RefineNet):
  """NCSNv1 (CondRefineNetDilated): noise-conditional InstanceNorm++ everywhere, avg-pool CRP."""
  STAGES = _STAGES_32
  REFINES = (('refine1', 2), ('refine2', 2), ('refine3', 1), ('refine4', 1))
  CONDITIONAL = True


@register_model(name='ncsnv2_128')
class NCSNv2_128(_RefineNet):  # pylint: disable=invalid-name
  STAGES = (('res1', 1, 1), ('res2', 2, 1), ('res3', 2, 1), ('res4', 4, 2), ('res5', 4, 4))
  REFINES = (('refine1', 4), ('refine2', 2), ('refine3', 2), ('refine4', 1), ('refine5', 1))


@register_model(name='ncsnv2_256')
class NCSNv2_256(_RefineNet):  # pylint: disable=invalid-name
  STAGES = (('res1', 1, 1), ('res2', 2, 1), ('res3', 2, 1), ('res31', 2, 1), ('res4', 4, 2), ('res5', 4, 4))
  REFINES = (('refine1', 4), ('refine2', 2), ('refine31', 2), ('refine3', 2), ('refine4', 1), ('refine5', 1))
