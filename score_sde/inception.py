"""The FID Inception-v3 (pytorch-fid's `fid_inception_v3()`) in flax, NHWC, and its weight conversion.

This is the TF 2015-12-05 Inception graph that FID/IS are defined with, as ported by pytorch-fid:
torchvision's Inception3 without aux logits, 1008 classes, and the FID patches (the average pools in
Mixed_5b-d, 6b-e and 7b ignore padded zeros; Mixed_7c pools with a max). Parameter names are the
PyTorch ones: `Mixed_6b.branch7x7_2.conv.weight` -> params['Mixed_6b']['branch7x7_2']['conv']['kernel'].

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, turned into an `.npz` of the same names
by experiments/convert_inception_weights.py (the only place torch is needed).
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.evaluation import in_batches

WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
CONVERT_COMMAND = ('python experiments/convert_inception_weights.py --download '
                   '--pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz')
IMAGE_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's 1008 logits (1000 ImageNet classes and 8 unused)


def _pair(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm(eps=0.001, running statistics) -> ReLU; padding as torch's (ph, pw)."""
  features: int
  kernel_size: int | tuple = 1
  stride: int = 1
  padding: int | tuple = 0

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.stride), padding=((ph, ph), (pw, pw)),
                use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def avg_pool_3x3(x):
  """3x3, stride 1, pad 1, averaging over the unpadded pixels only (torch count_include_pad=False, as TF)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride=1):
  """3x3 max pool; stride 1 pads by 1 (with -inf, as torch), stride 2 is unpadded."""
  padding = ((1, 1), (1, 1)) if stride == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


class InceptionA(nn.Module):  # pytorch-fid FIDInceptionA
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, name='branch1x1')(x)
    b5 = BasicConv2d(48, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, name='branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # torchvision InceptionB (Mixed_6a)

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):  # pytorch-fid FIDInceptionC
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, name='branch1x1')(x)
    b7 = BasicConv2d(c7, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, name='branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # torchvision InceptionD (Mixed_7a)

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """pytorch-fid FIDInceptionE_1 (pool='avg', Mixed_7b) and FIDInceptionE_2 (pool='max', Mixed_7c)."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, name='branch1x1')(x)
    b3 = BasicConv2d(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    pooled = avg_pool_3x3(x) if self.pool == 'avg' else max_pool_3x3(x)
    bp = BasicConv2d(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images):
  """NHWC images in [0, 1], 1 or 3 channels, any size -> (n, 299, 299, 3) in [-1, 1].

  Grey images are repeated to RGB (pytorch-fid reads images with PIL .convert('RGB')). The resize is
  half-pixel bilinear without antialiasing, i.e. torch F.interpolate(mode='bilinear', align_corners=False):
  jax's triangle kernel drops out-of-range taps and renormalises, which equals torch's edge clamping.
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'FID Inception expects NHWC images with 1 or 3 channels, got shape {images.shape}')
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
    images = jax.image.resize(images, (images.shape[0], IMAGE_SIZE, IMAGE_SIZE, 3), 'bilinear', antialias=False)
  return 2 * images - 1


class FIDInceptionV3(nn.Module):
  """images (n, h, w, 1|3) in [0, 1] -> (pool3 features (n, 2048), logits (n, 1008))."""

  @nn.compact
  def __call__(self, images):
    x = preprocess(images)
    x = BasicConv2d(32, 3, stride=2, name='Conv2d_1a_3x3')(x)  # 149
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)  # 147
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = max_pool_3x3(x, stride=2)  # 73
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)  # 71
    x = max_pool_3x3(x, stride=2)  # 35
    x = InceptionA(32, name='Mixed_5b')(x)  # 256 channels
    x = InceptionA(64, name='Mixed_5c')(x)  # 288
    x = InceptionA(64, name='Mixed_5d')(x)  # 288
    x = InceptionB(name='Mixed_6a')(x)  # 768 x 17 x 17
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)  # 1280 x 8 x 8
    x = InceptionE('avg', name='Mixed_7b')(x)  # 2048
    x = InceptionE('max', name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))  # pool3; dropout is the identity at evaluation
    return pool, nn.Dense(NUM_CLASSES, name='fc')(pool)


@functools.lru_cache(maxsize=1)
def abstract_variables():
  """Shapes of FIDInceptionV3's variables ({'params', 'batch_stats'}), without computing anything."""
  x = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)


# torch leaf name -> (collection, flax leaf name)
_LEAVES = {'weight': ('params', None), 'bias': ('params', 'bias'),
           'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _convert(leaf, value):
  collection, ours = _LEAVES[leaf]
  if leaf == 'weight':
    if value.ndim == 4:
      return collection, 'kernel', value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.ndim == 2:
      return collection, 'kernel', value.T  # Linear (out, in) -> (in, out)
    return collection, 'scale', value  # BatchNorm
  return collection, ours, value


def params_from_torch_state_dict(state_dict):
  """pytorch-fid state_dict {name: array} -> {'params', 'batch_stats'} of float32 numpy arrays.

  `num_batches_tracked` buffers are ignored; any other unknown, missing or misshapen entry is a ValueError.
  """
  shapes = abstract_variables()
  variables, problems, seen = {'params': {}, 'batch_stats': {}}, [], set()
  for name, value in state_dict.items():
    *path, leaf = name.split('.')
    if leaf == 'num_batches_tracked':
      continue
    if leaf not in _LEAVES:
      problems.append(f'unexpected parameter {name}')
      continue
    collection, ours, array = _convert(leaf, np.asarray(value, np.float32))
    target = shapes[collection]
    for p in path:
      target = target.get(p, {}) if isinstance(target, dict) else {}
    if ours not in target:
      problems.append(f'unexpected parameter {name}')
      continue
    if tuple(target[ours].shape) != array.shape:
      problems.append(f'{name}: {array.shape} after conversion, expected {tuple(target[ours].shape)}')
      continue
    node = variables[collection]
    for p in path:
      node = node.setdefault(p, {})
    node[ours] = np.ascontiguousarray(array)
    seen.add((collection, *path, ours))
  for key_path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    key = tuple(k.key for k in key_path)
    if key not in seen:
      problems.append(f'missing {"/".join(key)}')
  if problems:
    raise ValueError('The state dict is not the FID Inception:\n  ' + '\n  '.join(problems))
  return variables


def load_inception(path):
  """Variables from an `.npz` of the pytorch-fid state dict (keys are the PyTorch names)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'FID Inception weights {path} not found; download {WEIGHTS_URL} and convert it '
                            f'(needs torch): {CONVERT_COMMAND}')
  with np.load(path) as data:
    return params_from_torch_state_dict({k: data[k] for k in data.files})


def get_feature_fn(variables, batch_size=200):
  """A function images (n, h, w, 1|3) in [0, 1] -> (pool (n, 2048), logits (n, 1008)) as numpy.

  Runs in batches of `batch_size` (the last one padded), so each image shape compiles once.
  """
  apply = jax.jit(FIDInceptionV3().apply)
  variables = jax.device_put(variables)
  return lambda images: in_batches(lambda batch: apply(variables, batch), images, batch_size)
