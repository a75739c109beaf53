"""Blocks of NCSN++ / DDPM++ (Song et al. 2021, appendix H).

Module and parameter names follow the official Flax code (ResnetBlockBigGANpp_0/Conv_1/...),
so official Flax checkpoints load as they are and PyTorch ones map by module order.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import up_or_down_sampling as fir_ops
from score_sde.models.layers import NIN, Dropout, ddpm_conv1x1, ddpm_conv3x3, default_init, group_norm


def _skip(x, h, skip_rescale):
  return (x + h) / np.sqrt(2.) if skip_rescale else x + h


class Combine(nn.Module):
  """Merges the input pyramid into the main path: 1x1 conv of x, then sum or concat with y."""
  method: str = 'cat'

  @nn.compact
  def __call__(self, x, y):
    h = ddpm_conv1x1(x, y.shape[-1])
    if self.method == 'cat':
      return jnp.concatenate([h, y], axis=-1)
    if self.method == 'sum':
      return h + y
    raise ValueError(f'Unknown progressive_combine {self.method!r}; known: cat, sum.')


class AttnBlockpp(nn.Module):
  """Single-head self-attention over all pixels (DDPM), with optional 1/sqrt(2) skip."""
  skip_rescale: bool = False
  init_scale: float = 0.

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    h = group_norm(x)
    q, k, v = NIN(C)(h), NIN(C)(h), NIN(C)(h)
    w = jnp.einsum('bhwc,bHWc->bhwHW', q, k) * (C ** -0.5)
    w = jax.nn.softmax(w.reshape(B, H, W, H * W), axis=-1).reshape(B, H, W, H, W)
    h = jnp.einsum('bhwHW,bHWc->bhwc', w, v)
    h = NIN(C, init_scale=self.init_scale)(h)
    return _skip(x, h, self.skip_rescale)


class Upsample(nn.Module):
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      h = fir_ops.naive_upsample_2d(x)
      if self.with_conv:
        h = ddpm_conv3x3(h, out_ch)
    elif not self.with_conv:
      h = fir_ops.upsample_2d(x, self.fir_kernel)
    else:
      h = fir_ops.Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel,
                         kernel_init=default_init())(x)
    return h


class Downsample(nn.Module):
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return ddpm_conv3x3(x, out_ch, stride=2)
      return fir_ops.naive_downsample_2d(x)
    if not self.with_conv:
      return fir_ops.downsample_2d(x, self.fir_kernel)
    return fir_ops.Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel,
                          kernel_init=default_init())(x)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM residual block with GroupNorm(min(C/4, 32)) and optional 1/sqrt(2) skip."""
  act: Any
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.
  conv_dtype: Any = None  # model.conv_dtype: compute dtype of the block's convolutions (None: float32)

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = ddpm_conv3x3(self.act(group_norm(x)), out_ch, dtype=self.conv_dtype)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(h))
    h = Dropout(self.dropout)(h, deterministic=not train)
    h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.conv_dtype)
    if C != out_ch:
      x = ddpm_conv3x3(x, out_ch, dtype=self.conv_dtype) if self.conv_shortcut else NIN(out_ch)(x)
    return _skip(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN residual block; resamples inside the block when up or down is set."""
  act: Any
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.
  conv_dtype: Any = None  # model.conv_dtype: compute dtype of the block's convolutions (None: float32)

  def _resample(self, x):
    if self.up:
      return fir_ops.upsample_2d(x, self.fir_kernel) if self.fir else fir_ops.naive_upsample_2d(x)
    if self.down:
      return fir_ops.downsample_2d(x, self.fir_kernel) if self.fir else fir_ops.naive_downsample_2d(x)
    return x

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = self.act(group_norm(x))
    h, x = self._resample(h), self._resample(x)
    h = ddpm_conv3x3(h, out_ch, dtype=self.conv_dtype)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(h))
    h = Dropout(self.dropout)(h, deterministic=not train)
    h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.conv_dtype)
    if C != out_ch or self.up or self.down:
      x = ddpm_conv1x1(x, out_ch, dtype=self.conv_dtype)
    return _skip(x, h, self.skip_rescale)
