"""FIR up/down-sampling of NHWC images (the StyleGAN2 ops used by NCSN++).

`upfirdn2d` zero-stuffs, pads, convolves each channel with a small FIR kernel and
subsamples. Everything else is a thin wrapper with the padding of StyleGAN2.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DN = ('NHWC', 'HWIO', 'NHWC')


def _setup_kernel(k):
  """1-D taps -> normalised 2-D kernel (outer product); 2-D kernels are normalised as given."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  k = k / np.sum(k)
  assert k.ndim == 2 and k.shape[0] == k.shape[1], k.shape
  return k


def upfirdn2d(x, k, up=1, down=1, pad=(0, 0)):
  """Upsample by inserting up-1 zeros after each pixel, pad (pad0, pad1) on both spatial axes
  (negative values crop), convolve with the 2-D kernel `k` and keep every `down`-th pixel."""
  k = np.asarray(k, dtype=np.float32)
  channels = x.shape[-1]
  p0, p1 = pad
  cfg = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1), (0, 0, 0)]
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
  # A true convolution with k is a correlation with the flipped kernel; one filter per channel.
  w = np.tile(k[::-1, ::-1, None, None], (1, 1, 1, channels))
  return jax.lax.conv_general_dilated(x, jnp.asarray(w, x.dtype), (down, down), 'VALID',
                                      dimension_numbers=_DN, feature_group_count=channels)


def upsample_2d(x, k=(1, 3, 3, 1), factor=2, gain=1):
  k = _setup_kernel(k) * (gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=(1, 3, 3, 1), factor=2, gain=1):
  k = _setup_kernel(k) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k=(1, 3, 3, 1), factor=2, gain=1):
  """Transposed convolution with stride `factor` (HWIO kernel w), then FIR filtering."""
  conv = w.shape[0]
  k = _setup_kernel(k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (conv - 1)
  x = jax.lax.conv_general_dilated(x, w, (1, 1), [(conv - 1, conv - 1)] * 2,
                                   lhs_dilation=(factor, factor), dimension_numbers=_DN)
  return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=(1, 3, 3, 1), factor=2, gain=1):
  """FIR filtering, then a convolution with stride `factor` (HWIO kernel w)."""
  conv = w.shape[0]
  k = _setup_kernel(k) * gain
  p = (k.shape[0] - factor) + (conv - 1)
  x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
  return jax.lax.conv_general_dilated(x, w, (factor, factor), 'VALID', dimension_numbers=_DN)


def naive_upsample_2d(x, factor=2):
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x, factor=2):
  B, H, W, C = x.shape
  return x.reshape(B, H // factor, factor, W // factor, factor, C).mean(axis=(2, 4))


class Conv2d(nn.Module):
  """Convolution with optional FIR up- or down-sampling (params 'weight' HWIO and 'bias')."""
  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Optional[Any] = None

  @nn.compact
  def __call__(self, x):
    assert not (self.up and self.down) and self.kernel % 2 == 1
    w = self.param('weight', self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=_DN)
    if self.use_bias:
      x = x + self.param('bias', jax.nn.initializers.zeros, (self.fmaps,))
    return x
