"""FID Inception-v3: parameter names/shapes against pytorch-fid's, conversion conventions, a forward pass."""
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from score_sde import inception

REPO = pathlib.Path(__file__).resolve().parents[1]


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
  done = subprocess.run([sys.executable, str(REPO / 'experiments' / 'convert_inception_weights.py'),
                         '--pth', str(tmp_path / 'x.pth'), '--out', str(tmp_path / 'x.npz')],
                        check=False, capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and 'torch' in done.stderr


def test_convert_cli_writes_npz_that_loads(tmp_path, state_dict, variables):
  """The CLI with a stand-in `torch` whose load() returns the random state dict as tensor-like objects."""
  np.savez(tmp_path / 'weights.npz', **state_dict)
  (tmp_path / 'fake').mkdir()
  (tmp_path / 'fake' / 'torch.py').write_text(
      'import numpy as np\n'
      'class T:\n'
      '  def __init__(self, a): self.a = a\n'
      '  def detach(self): return self\n'
      '  def cpu(self): return self\n'
      '  def numpy(self): return self.a\n'
      'def load(path, map_location=None, weights_only=False):\n'
      '  with np.load(path) as d: return {k: T(d[k]) for k in d.files}\n')
  out = tmp_path / 'inception_fid.npz'
  env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'fake')}
  done = subprocess.run([sys.executable, str(REPO / 'experiments' / 'convert_inception_weights.py'),
                         '--pth', str(tmp_path / 'weights.npz'), '--out', str(out)],
                        check=False, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'{TRAINABLE:,} trainable parameters' in done.stdout
  jax.tree.map(np.testing.assert_array_equal, inception.load_inception(str(out)), variables)
