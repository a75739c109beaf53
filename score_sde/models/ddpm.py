"""The DDPM U-Net of Ho et al. 2020 (32 GroupNorm groups, attention at 16x16).

Module names follow the official Flax code; creation order follows the official
PyTorch `all_modules` list (see convert.py).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde.models import layers
from score_sde.models.layers import NIN, Dropout, ddpm_conv3x3, default_init, group_norm
from score_sde.models.up_or_down_sampling import naive_downsample_2d, naive_upsample_2d
from score_sde.models.utils import check_unet_config, register_model


def _norm(x):
  return group_norm(x, num_groups=32)


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels."""

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    h = _norm(x)
    q, k, v = NIN(C)(h), NIN(C)(h), NIN(C)(h)
    w = jnp.einsum('bhwc,bHWc->bhwHW', q, k) * (C ** -0.5)
    w = jax.nn.softmax(w.reshape(B, H, W, H * W), axis=-1).reshape(B, H, W, H, W)
    h = jnp.einsum('bhwHW,bHWc->bhwc', w, v)
    return x + NIN(C, init_scale=0.)(h)


class Upsample(nn.Module):
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    h = naive_upsample_2d(x)
    return ddpm_conv3x3(h, x.shape[-1]) if self.with_conv else h


class Downsample(nn.Module):
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return ddpm_conv3x3(x, x.shape[-1], stride=2)  # 'SAME' = pad (0, 1) like the official code
    return naive_downsample_2d(x)


class ResnetBlockDDPM(nn.Module):
  act: Any
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    C = x.shape[-1]
    out_ch = self.out_ch or C
    h = ddpm_conv3x3(self.act(_norm(x)), out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(_norm(h))
    h = Dropout(self.dropout)(h, deterministic=not train)
    h = ddpm_conv3x3(h, out_ch, init_scale=0.)
    if C != out_ch:
      x = ddpm_conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h


@register_model(name='ddpm')
class DDPM(nn.Module):
  config: ml_collections.ConfigDict
  check_config = staticmethod(check_unet_config)
  takes_class_labels = True  # model.num_classes > 0: class_labels=

  @nn.compact
  def __call__(self, x, labels, train=False, class_labels=None):
    """labels: the official time input (the noise index); class_labels: model.num_classes > 0 adds their
    embedding (layers.class_embedding; None = the null label) to the time embedding."""
    m = self.config.model
    if m.normalization != 'GroupNorm':
      raise ValueError(f'DDPM supports normalization GroupNorm only, not {m.normalization!r}.')
    act = layers.get_act(self.config)
    nf, ch_mult, num_res = m.nf, tuple(m.ch_mult), m.num_res_blocks
    num_levels = len(ch_mult)

    class_emb = layers.class_embedding(self.config, class_labels, x.shape[0], nf)
    if m.conditional or class_emb is not None:  # without noise conditioning, the class alone is embedded
      temb = layers.get_timestep_embedding(labels, nf) if m.conditional else 0.
      if class_emb is not None:
        temb = temb + class_emb
      temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
    else:
      temb = None
    block = functools.partial(ResnetBlockDDPM, act=act, dropout=m.dropout)

    h = x if self.config.data.centered else 2 * x - 1.
    hs = [ddpm_conv3x3(h, nf)]
    for level in range(num_levels):
      for _ in range(num_res):
        h = block(out_ch=nf * ch_mult[level])(hs[-1], temb, train)
        if h.shape[1] in m.attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)
      if level != num_levels - 1:
        hs.append(Downsample(with_conv=m.resamp_with_conv)(hs[-1]))

    h = block()(hs[-1], temb, train)
    h = AttnBlock()(h)
    h = block()(h, temb, train)

    for level in reversed(range(num_levels)):
      for _ in range(num_res + 1):
        h = block(out_ch=nf * ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in m.attn_resolutions:
        h = AttnBlock()(h)
      if level != 0:
        h = Upsample(with_conv=m.resamp_with_conv)(h)
    assert not hs

    h = ddpm_conv3x3(act(_norm(h)), x.shape[-1], init_scale=0.)
    if m.scale_by_sigma:
      sigmas = jnp.asarray(layers.get_sigmas(self.config), jnp.float32)
      h = h / sigmas[labels.astype(jnp.int32)].reshape((-1,) + (1,) * (h.ndim - 1))
    return h
