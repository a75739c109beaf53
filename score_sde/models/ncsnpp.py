"""NCSN++ and DDPM++ (one U-Net; the config picks the variant), Song et al. 2021.

Submodules are created in the order of the official `all_modules` list, so a PyTorch
state_dict maps onto the parameter tree by position (see convert.py).
"""
import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde.models import layers, plusplus_blocks
from score_sde.models.layers import ddpm_conv3x3, default_init, group_norm
from score_sde.models.utils import check_unet_config, register_model

_CHOICES = {
    'progressive': ('none', 'output_skip', 'residual'),
    'progressive_input': ('none', 'input_skip', 'residual'),
    'embedding_type': ('fourier', 'positional'),
    'resblock_type': ('ddpm', 'biggan'),
    'progressive_combine': ('sum', 'cat'),
}


def _option(m, name):
  value = getattr(m, name).lower()
  if value not in _CHOICES[name]:
    raise ValueError(f'Unknown model.{name} {value!r}; known: {_CHOICES[name]}.')
  return value


@register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """x (B, H, W, C) and the time input -> output of the same shape.

  With model.num_classes > 0, the embedding of class_labels (layers.class_embedding; None = the null label) is
  added to the noise embedding before its two-layer MLP, where EDM's SongUNet adds its label embedding.
  """
  config: ml_collections.ConfigDict
  check_config = staticmethod(check_unet_config)
  takes_class_labels = True  # model.num_classes > 0: class_labels=

  @nn.compact
  def __call__(self, x, time_cond, train=False, class_labels=None):
    m = self.config.model
    act = layers.get_act(self.config)
    nf, ch_mult, num_res = m.nf, tuple(m.ch_mult), m.num_res_blocks
    num_levels = len(ch_mult)
    progressive, progressive_input = _option(m, 'progressive'), _option(m, 'progressive_input')
    embedding_type, resblock_type = _option(m, 'embedding_type'), _option(m, 'resblock_type')
    combine = _option(m, 'progressive_combine')
    fir, fir_kernel, skip_rescale, init_scale = m.fir, tuple(m.fir_kernel), m.skip_rescale, m.init_scale
    out_channels = x.shape[-1]

    # Time / noise-level embedding.
    if embedding_type == 'fourier':
      used_sigmas = time_cond  # VE: the model receives σ(t) and embeds log σ
      temb = layers.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale)(jnp.log(used_sigmas))
    else:
      used_sigmas = jnp.asarray(layers.get_sigmas(self.config), jnp.float32)[time_cond.astype(jnp.int32)]
      temb = layers.get_timestep_embedding(time_cond, nf)
    class_emb = layers.class_embedding(self.config, class_labels, x.shape[0], temb.shape[-1])
    if class_emb is not None:  # without noise conditioning, the class alone is embedded
      temb = temb + class_emb if m.conditional else class_emb
    if m.conditional or class_emb is not None:
      temb = nn.Dense(nf * 4, kernel_init=default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_init())(act(temb))
    else:
      temb = None

    conv_dtype = m.conv_dtype
    block_kw = dict(act=act, dropout=m.dropout, init_scale=init_scale, skip_rescale=skip_rescale,
                    conv_dtype=None if conv_dtype == 'float32' else jnp.dtype(conv_dtype))
    if resblock_type == 'ddpm':
      ResnetBlock = functools.partial(plusplus_blocks.ResnetBlockDDPMpp, **block_kw)
    else:
      ResnetBlock = functools.partial(plusplus_blocks.ResnetBlockBigGANpp, fir=fir, fir_kernel=fir_kernel, **block_kw)
    AttnBlock = functools.partial(plusplus_blocks.AttnBlockpp, init_scale=init_scale, skip_rescale=skip_rescale)
    resample_kw = dict(fir=fir, fir_kernel=fir_kernel)

    def block(h, **kw):
      return ResnetBlock(**kw)(h, temb, train)

    def skip_sum(a, b):
      return (a + b) / np.sqrt(2.) if skip_rescale else a + b

    if not self.config.data.centered:
      x = 2 * x - 1.  # data in [0, 1] -> [-1, 1]

    # Downsampling path.
    input_pyramid = x if progressive_input != 'none' else None
    hs = [ddpm_conv3x3(x, nf)]
    for level in range(num_levels):
      for _ in range(num_res):
        h = block(hs[-1], out_ch=nf * ch_mult[level])
        if h.shape[1] in m.attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)
      if level != num_levels - 1:
        if resblock_type == 'ddpm':
          h = plusplus_blocks.Downsample(with_conv=m.resamp_with_conv, **resample_kw)(hs[-1])
        else:
          h = block(hs[-1], down=True)
        if progressive_input == 'input_skip':
          input_pyramid = plusplus_blocks.Downsample(with_conv=False, **resample_kw)(input_pyramid)
          h = plusplus_blocks.Combine(method=combine)(input_pyramid, h)
        elif progressive_input == 'residual':
          input_pyramid = plusplus_blocks.Downsample(out_ch=h.shape[-1], with_conv=True, **resample_kw)(input_pyramid)
          h = input_pyramid = skip_sum(input_pyramid, h)
        hs.append(h)

    h = block(hs[-1])
    h = AttnBlock()(h)
    h = block(h)

    # Upsampling path.
    pyramid = None
    for level in reversed(range(num_levels)):
      for _ in range(num_res + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), out_ch=nf * ch_mult[level])
      if h.shape[1] in m.attn_resolutions:
        h = AttnBlock()(h)

      if progressive != 'none':
        if level == num_levels - 1:
          width = out_channels if progressive == 'output_skip' else h.shape[-1]
          scale = init_scale if progressive == 'output_skip' else 1.
          pyramid = ddpm_conv3x3(act(group_norm(h)), width, init_scale=scale)
        elif progressive == 'output_skip':
          pyramid = plusplus_blocks.Upsample(with_conv=False, **resample_kw)(pyramid)
          pyramid = pyramid + ddpm_conv3x3(act(group_norm(h)), out_channels, init_scale=init_scale)
        else:  # residual
          pyramid = plusplus_blocks.Upsample(out_ch=h.shape[-1], with_conv=True, **resample_kw)(pyramid)
          h = pyramid = skip_sum(pyramid, h)

      if level != 0:
        if resblock_type == 'ddpm':
          h = plusplus_blocks.Upsample(with_conv=m.resamp_with_conv, **resample_kw)(h)
        else:
          h = block(h, up=True)
    assert not hs

    if progressive == 'output_skip':
      h = pyramid
    else:
      h = ddpm_conv3x3(act(group_norm(h)), out_channels, init_scale=init_scale)

    if m.scale_by_sigma:
      h = h / used_sigmas.reshape((-1,) + (1,) * (h.ndim - 1))
    return h
