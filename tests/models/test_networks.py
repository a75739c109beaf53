"""Score networks: parity with the official PyTorch models, every official knob combination, converters.

The parity cases read the official fixtures (helpers.REFERENCE_DIR; skipped when absent).
Everything else runs at tiny sizes (8x8 images, nf 16, ch_mult (1, 2), batch 2).
"""
import io
import json
import os
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import models, sde_lib
from score_sde.models import convert

from helpers import REFERENCE_DIR as REFERENCE


def _config(tree):
  """The json config of a fixture -> ConfigDict (lists become tuples, as in the config files)."""
  if isinstance(tree, dict):
    return ml_collections.ConfigDict({k: _config(v) for k, v in tree.items()})
  return tuple(tree) if isinstance(tree, list) else tree


def _rel_err(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return np.abs(actual - expected).max() / np.abs(expected).max()


# Tests compile many small networks once each: skip XLA's expensive LLVM passes (2-3x faster
# compiles on CPU); the numerics stay float32 and the runs are tiny.
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _compile(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)


class _JittedModel:
  """model.apply compiled once per case; get_score_fn calls it like a flax Module."""

  def __init__(self, model):
    self._fn = lambda v, x, t: model.apply(v, x, t, train=False)
    self._compiled = None

  def apply(self, variables, x, time_cond, train=False, rngs=None):
    assert not train
    args = (variables, jnp.asarray(x), jnp.asarray(time_cond, jnp.float32))
    if self._compiled is None:
      self._compiled = _compile(self._fn, *args)
    return self._compiled(*args)


# ---------------------------------------------------------------------------------------------
# Official fixtures: NCSN++ (VE, continuous), DDPM++ (VP, continuous), DDPM (VP, discrete).
# ---------------------------------------------------------------------------------------------

_CASES = {
    'case_A_ncsnpp_ve_continuous': True,
    'case_B_ddpmpp_vp_continuous': True,
    'case_C_ddpm_vp_discrete': False,  # continuous flag of get_score_fn
}


@pytest.mark.parametrize('case', sorted(_CASES))
def test_official_pytorch_parity(case):
  npz, meta_path = REFERENCE / f'{case}.npz', REFERENCE / f'{case}.json'
  if not (npz.exists() and meta_path.exists()):
    pytest.skip(f'official fixture {npz} is absent (it ships beside the repo for developers; '
                'set SCORE_SDE_REFERENCE to its folder)')
  meta = json.loads(meta_path.read_text())
  arrays = dict(np.load(npz))
  config = _config(meta['config'])
  state_dict = {k: arrays[k] for k in meta['state_dict']['keys_in_order']}
  variables = convert.from_official_pytorch(config, state_dict)
  assert convert.count_params(variables) == meta['state_dict']['num_parameters']

  model = _JittedModel(models.get_model(config))
  x = jnp.asarray(arrays['input_x_nhwc'])
  # Integer DDPM timesteps go in as floats: the official embedding casts them to float first.
  out = model.apply(variables, x, arrays['input_labels'])
  tol = 1e-5  # the README's expectation: atol = 1e-5 * max|output| in float32
  assert _rel_err(out, arrays['output_nhwc']) <= tol

  sde = sde_lib.get_sde(config)
  score_fn = models.get_score_fn(sde, model, variables, train=False, continuous=_CASES[case])
  if 'input_labels_float' in arrays:  # case C: the sampling path with float labels t (N - 1)
    out_float = model.apply(variables, x, arrays['input_labels_float'])
    assert _rel_err(out_float, arrays['output_float_labels_nhwc']) <= tol
    t = arrays['input_t_for_float_labels']
  else:
    t = arrays['input_t']
  score = score_fn(x, jnp.asarray(t))
  assert _rel_err(score, arrays['score_official_from_t_nhwc']) <= tol


# ---------------------------------------------------------------------------------------------
# Every knob combination of the official configs: builds, forward + backward in train mode.
# ---------------------------------------------------------------------------------------------

def _tiny_config(name, **model_overrides):
  config = ml_collections.ConfigDict()
  config.training = dict(sde='vesde', continuous=True)
  config.data = dict(image_size=8, num_channels=3, centered=False)
  config.model = dict(
      name=name, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
      resamp_with_conv=True, conditional=True, nonlinearity='swish', normalization='GroupNorm',
      scale_by_sigma=False, sigma_min=0.01, sigma_max=50., num_scales=10, beta_min=0.1, beta_max=20.,
      embedding_type='fourier', fourier_scale=16., fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
      resblock_type='biggan', progressive='none', progressive_input='none', progressive_combine='sum',
      init_scale=0., interpolation='bilinear')
  config.model.update(model_overrides)
  return config


_NCSN = dict(nonlinearity='elu', normalization='InstanceNorm++', scale_by_sigma=True)
_KNOBS = {
    # NCSN++ cont. (VE): Fourier features, FIR, residual input pyramid, output / sigma.
    'ncsnpp_ve_continuous': ('ncsnpp', dict(fir=True, progressive_input='residual', scale_by_sigma=True)),
    # NCSN++ (SMLD) and NCSN++ on CelebA: positional embedding of the index, output / sigmas[index].
    # (NCSN++ with VP / sub-VP is the same network without the division.)
    'ncsnpp_ve_discrete': ('ncsnpp', dict(embedding_type='positional', fir=True, progressive_input='residual',
                                          scale_by_sigma=True)),
    # DDPM++ (VP, sub-VP, discrete DDPM).
    'ddpmpp': ('ncsnpp', dict(embedding_type='positional')),
    # High-resolution NCSN++ (bedroom, church, FFHQ, CelebA-HQ): output/input skip pyramids.
    'ncsnpp_highres': ('ncsnpp', dict(fir=True, progressive='output_skip', progressive_input='input_skip',
                                      scale_by_sigma=True, dropout=0.)),
    # Knobs no official config uses (forward only): DDPM-style blocks with FIR conv resamplers,
    # residual output pyramid, concatenating input skip; and the non-FIR, conv-free resamplers.
    'ncsnpp_other_knobs': ('ncsnpp', dict(resblock_type='ddpm', fir=True, progressive='residual',
                                          progressive_input='input_skip', progressive_combine='cat',
                                          skip_rescale=False, init_scale=0.1)),
    'ncsnpp_no_conv_resampling': ('ncsnpp', dict(resblock_type='ddpm', resamp_with_conv=False,
                                                 progressive='output_skip', progressive_input='residual',
                                                 embedding_type='positional', nonlinearity='lrelu')),
    'ddpm': ('ddpm', dict(embedding_type='positional', nf=32)),  # 32 GroupNorm groups
    'ddpm_unconditional': ('ddpm', dict(conditional=False, scale_by_sigma=True, resamp_with_conv=False, nf=32)),
    'ncsn': ('ncsn', dict(_NCSN, scale_by_sigma=False)),
    'ncsnv2_64': ('ncsnv2_64', _NCSN),
    'ncsnv2_128': ('ncsnv2_128', _NCSN),
    'ncsnv2_256': ('ncsnv2_256', dict(_NCSN, normalization='VarianceNorm')),
}


# ncsnv2_256 (no official config) has only the blocks of ncsnv2_64/128, which run backward too.
_FORWARD_ONLY = ('ncsnpp_other_knobs', 'ncsnpp_no_conv_resampling', 'ncsnv2_256')


@pytest.mark.parametrize('knobs', sorted(_KNOBS))
def test_knob_combination_forward_backward(knobs):
  name, overrides = _KNOBS[knobs]
  config = _tiny_config(name, **overrides)
  if name == 'ncsnv2_256':
    config.data.image_size = 16  # three 2x poolings
  if name == 'ncsnpp' and config.model.embedding_type == 'fourier':
    labels = jnp.array([0.5, 20.])  # sigmas
  else:
    labels = jnp.array([3., 7.])  # time steps / indices into the noise table
  size = config.data.image_size
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, size, size, 3))
  model = models.get_model(config)
  shapes, _ = convert.abstract_variables(config, batch_size=2)
  noise = np.random.RandomState(1)  # numpy, not jax.random: no per-shape compiles
  params = jax.tree_util.tree_map(
      lambda s: (0.1 * noise.standard_normal(s.shape)).astype(np.float32), shapes['params'])

  if knobs in _FORWARD_ONLY:
    out = np.asarray(_compile(lambda p: model.apply({'params': p}, x, labels, train=False), params)(params))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    return

  def loss(p, rng):
    out = model.apply({'params': p}, x, labels, train=True, rngs={'dropout': rng})
    return jnp.mean(out ** 2), out

  forward_backward = _compile(jax.value_and_grad(loss, has_aux=True), params, jax.random.PRNGKey(2))
  (value, out), grads = jax.device_get(forward_backward(params, jax.random.PRNGKey(2)))
  assert out.shape == x.shape
  assert np.isfinite(value)
  flat = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in flat)
  assert sum(np.abs(g).sum() > 0 for g in flat) > len(flat) // 2
  if config.model.dropout > 0 and name in ('ncsnpp', 'ddpm'):
    (_, out2), _ = forward_backward(params, jax.random.PRNGKey(3))
    assert not np.allclose(out, np.asarray(out2)), 'dropout must draw from the dropout rng in train mode'


def test_official_init_and_input_centering():
  """init_scale = 0 makes the last conv ~0 (1e-10 scale) and DDPM init is variance_scaling fan_avg;
  data.centered=False makes the network see 2x - 1 (so it equals the centred one on 2x - 1)."""
  config = _tiny_config('ncsnpp', embedding_type='positional', dropout=0., init_scale=0.)
  centered = _tiny_config('ncsnpp', embedding_type='positional', dropout=0., init_scale=0.1)
  centered.data.centered = True
  model, model_c = models.get_model(config), models.get_model(centered)
  _, order = convert.abstract_variables(config)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
  t = jnp.array([3., 7.])

  def run(rng):
    params = model.init(rng, x, t)
    params_c = model_c.init(rng, x, t)  # init_scale only changes the init, not the network
    return params, model.apply(params_c, x, t), model_c.apply(params_c, 2 * x - 1, t)

  params, a, b = jax.device_get(_compile(run, jax.random.PRNGKey(1))(jax.random.PRNGKey(1)))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  last = params['params'][order[-1]]
  assert np.abs(last['kernel']).max() < 1e-4 and np.abs(last['bias']).max() == 0.
  first_dense = params['params']['Dense_0']['kernel']
  limit = np.sqrt(3. / (sum(first_dense.shape) / 2))
  assert 0.5 * limit < np.abs(first_dense).max() <= limit + 1e-6


# ---------------------------------------------------------------------------------------------
# Converters (no compute: parameter shapes come from jax.eval_shape).
# ---------------------------------------------------------------------------------------------

def _torch_layout(path, leaf, shape):
  """Our parameter -> (official PyTorch name, array in torch layout), for the named NCSN models."""
  parts = []
  for p in path:
    head, _, index = p.rpartition('_')
    parts.append(f'{head}.{index}' if index.isdigit() and not p[0].isdigit() else p)
  value = np.random.RandomState(len(parts)).randn(*shape).astype(np.float32)
  if leaf == 'kernel':
    return '.'.join(parts + ['weight']), value.transpose(3, 2, 0, 1)
  if leaf == 'embedding':
    return '.'.join(parts + ['weight']), value
  return '.'.join(parts + [leaf]), value


@pytest.mark.parametrize('name', ['ncsnv2_64', 'ncsn'])
def test_ncsn_state_dict_names_map_by_name(name):
  config = _tiny_config(name, **_NCSN)
  shapes, _ = convert.abstract_variables(config)
  flat = {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]}
  state_dict = dict(_torch_layout(path[:-1], path[-1], leaf.shape) for path, leaf in flat.items())
  # The original NCSN/NCSNv2 attribute names.
  expected = ['begin_conv.weight', 'res1.0.conv1.weight', 'res2.0.conv2.conv.weight', 'res2.0.shortcut.conv.bias',
              'res3.0.shortcut.weight', 'refine1.adapt_convs.0.1_1_conv.weight', 'refine2.msf.convs.1.bias',
              'refine2.crp.convs.0.weight', 'refine4.output_convs.3_2_conv.weight', 'end_conv.bias']
  expected += (['normalizer.embed.weight', 'refine2.msf.norms.0.embed.weight', 'refine1.crp.norms.1.embed.weight',
                'refine1.adapt_convs.0.2_2_norm.embed.weight'] if name == 'ncsn'
               else ['normalizer.alpha', 'normalizer.gamma', 'normalizer.beta', 'res1.0.normalize2.alpha'])
  assert not set(expected) - set(state_dict), sorted(set(expected) - set(state_dict))
  state_dict['sigmas'] = np.zeros(10)
  state_dict = {'module.' + k: v for k, v in state_dict.items()}  # DataParallel prefix
  params = convert.from_official_pytorch(config, state_dict)['params']
  np.testing.assert_array_equal(params['res1_0']['conv1']['kernel'],
                                state_dict['module.res1.0.conv1.weight'].transpose(2, 3, 1, 0))
  assert convert.count_params(params) == convert.count_params(shapes['params'])


def test_pytorch_mapping_reports_mismatches():
  config = _tiny_config('ddpm', nf=32)
  with pytest.raises(ValueError, match='official modules with parameters'):
    convert.from_official_pytorch(config, {'all_modules.0.weight': np.zeros((64, 16))})


def test_official_flax_checkpoint_roundtrip():
  config = _tiny_config('ncsnpp', fir=True, progressive='output_skip', progressive_input='input_skip')
  shapes, _ = convert.abstract_variables(config)
  params = jax.tree_util.tree_map(lambda s: np.full(s.shape, 0.5, np.float32), shapes['params'])
  raw = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes['params'])
  state = {'step': 3, 'optimizer': {'target': raw, 'state': {}}, 'params_ema': params, 'ema_rate': 0.999}
  blob = flax.serialization.msgpack_serialize(state)
  ema = convert.from_official_flax(config, blob)['params']
  assert all(float(np.min(v)) == 0.5 for v in jax.tree_util.tree_leaves(ema))
  assert all(float(np.max(v)) == 0. for v in jax.tree_util.tree_leaves(
      convert.from_official_flax(config, io.BytesIO(blob).getvalue(), use_ema=False)['params']))
  bad = dict(params)
  bad.pop(next(iter(bad)))
  with pytest.raises(ValueError, match='no official parameter'):
    convert.from_official_flax(config, {'params': bad})


def test_ema_shadow_params_follow_trainable_parameter_order():
  state_dict = {'sigmas': np.ones(3), 'all_modules.0.W': np.ones(4), 'all_modules.1.weight': np.ones((2, 8)),
                'all_modules.1.bias': np.ones(2)}
  out = convert.apply_ema(state_dict, [np.zeros((2, 8)), np.zeros(2)])
  assert float(out['all_modules.1.weight'].sum()) == 0. and float(out['all_modules.0.W'].sum()) == 4.
  with pytest.raises(ValueError):
    convert.apply_ema(state_dict, [np.zeros((2, 8))])


def test_load_pth_without_torch_says_so(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    pytest.skip('torch is installed')
  except ImportError:
    pass
  with pytest.raises(ImportError, match='needs PyTorch'):
    convert.load_pth(tmp_path / 'x.pth')
