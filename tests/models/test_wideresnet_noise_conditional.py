"""The noise-conditional WideResnet: a checkpoint in the official Flax layout, written here, read by the converter
and run, against a numpy transcription of the official forward pass (models/wideresnet_noise_conditional.py and
models/utils.get_logit_fn of yang-song/score_sde)."""
import flax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.models import wideresnet_noise_conditional as wrn

BLOCKS, K, CLASSES = 2, 1, 10  # WideResnet(blocks_per_group=2, channel_multiplier=1): widths 16, 32, 64
CIFAR_MEAN = np.array([0.49139968, 0.48215841, 0.44653091])
CIFAR_STD = np.array([0.24703223, 0.24348513, 0.26158784])


def official_layout(rng):
  """The official parameter tree: module names as the official Flax module creates them."""
  def dense(n_in, n_out):
    return {'kernel': rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), 'bias': 0.1 * rng.normal(size=n_out)}

  def norm(c):
    return {'scale': 1. + 0.1 * rng.normal(size=c), 'bias': 0.1 * rng.normal(size=c)}

  def conv(c_in, c_out):
    return {'kernel': rng.normal(size=(3, 3, c_in, c_out)) / np.sqrt(9 * c_in)}

  tree = {'GaussianFourierProjection_0': {'W': 16. * rng.normal(size=128)},
          'Dense_0': dense(256, 512), 'Dense_1': dense(512, 512), 'init_conv': conv(3, 16)}
  c_in = 16
  for g, width in enumerate((16 * K, 32 * K, 64 * K)):
    group = {}
    for b in range(BLOCKS):
      group[f'WideResnetBlock_{b}'] = {'init_bn': norm(c_in), 'conv1': conv(c_in, width), 'Dense_0': dense(512, width),
                                       'bn_2': norm(width), 'conv2': conv(width, width)}
      c_in = width
    tree[f'WideResnetGroup_{g}'] = group
  tree['pre-pool-bn'] = norm(64 * K)
  tree['Dense_2'] = dense(64 * K, CLASSES)
  return jax_tree_map(lambda v: np.asarray(v, np.float32), tree)


def jax_tree_map(fn, tree):
  return {k: jax_tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


# ---------------------------------------------------------------- numpy transcription of the official forward

def group_norm(x, p, eps=1e-5):
  n, h, w, c = x.shape
  groups = min(c // 4, 32)
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p['scale'] + p['bias']


def conv_same(x, kernel, stride=1):
  """TF/XLA 'SAME' padding: out = ceil(in / stride), the extra padding row/column at the end."""
  n, h, w, _ = x.shape
  kh, kw, _, c_out = kernel.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h, pad_w = max((out_h - 1) * stride + kh - h, 0), max((out_w - 1) * stride + kw - w, 0)
  x = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
  out = np.zeros((n, out_h, out_w, c_out))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
      out += patch @ kernel[i, j]
  return out


def relu(x):
  return np.maximum(x, 0.)


def swish(x):
  return x / (1. + np.exp(-x))


def block(x, temb, p, stride, activate_before_residual):
  if activate_before_residual:
    x = relu(group_norm(x, p['init_bn']))
    h = x
  else:
    h = relu(group_norm(x, p['init_bn']))
  h = conv_same(h, p['conv1']['kernel'], stride)
  h = h + (swish(temb) @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])[:, None, None, :]
  h = conv_same(relu(group_norm(h, p['bn_2'])), p['conv2']['kernel'])
  if h.shape[-1] != x.shape[-1]:  # avg-pool by the stride, zero channels appended
    s = x.shape[2] // h.shape[2]
    n, H, W, c = x.shape
    x = x.reshape(n, H // s, s, W // s, s, c).mean(axis=(2, 4))
    x = np.concatenate([x, np.zeros(x.shape[:3] + (h.shape[-1] - c,))], axis=-1)
  return h + x


def official_logits(params, images01, sigmas):
  """get_logit_fn: CIFAR mean/std, then WideResnet: per-image standardisation, log σ Fourier embedding, ..."""
  x = (np.asarray(images01, np.float64) - CIFAR_MEAN) / CIFAR_STD
  D = np.prod(x.shape[1:])
  x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(D))
  proj = np.log(sigmas)[:, None] * params['GaussianFourierProjection_0']['W'][None] * 2 * np.pi
  temb = np.concatenate([np.sin(proj), np.cos(proj)], axis=-1)
  temb = temb @ params['Dense_0']['kernel'] + params['Dense_0']['bias']
  temb = swish(temb) @ params['Dense_1']['kernel'] + params['Dense_1']['bias']
  x = conv_same(x, params['init_conv']['kernel'])
  for g, stride in enumerate((1, 2, 2)):
    for b in range(BLOCKS):
      x = block(x, temb, params[f'WideResnetGroup_{g}'][f'WideResnetBlock_{b}'], stride if b == 0 else 1,
                g == 0 and b == 0)
  x = relu(group_norm(x, params['pre-pool-bn'])).mean(axis=(1, 2))
  return x @ params['Dense_2']['kernel'] + params['Dense_2']['bias']


def log_softmax(logits):
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


# ---------------------------------------------------------------- tests

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  params = official_layout(np.random.default_rng(0))
  path = tmp_path_factory.mktemp('wrn') / 'checkpoint_1'
  path.write_bytes(flax.serialization.msgpack_serialize(params))  # what checkpoints.save_checkpoint writes
  return path, params


def test_converted_checkpoint_gives_the_official_log_probabilities(checkpoint):
  path, params = checkpoint
  model = wrn.WideResnet(blocks_per_group=BLOCKS, channel_multiplier=K, num_outputs=CLASSES)
  variables = wrn.from_official_flax(str(path), model, image_shape=(8, 8, 3))
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=1000)
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
  t = np.array([0.05, 0.4, 0.9], np.float32)
  sigma = np.asarray(sde.marginal_prob(jnp.asarray(images), jnp.asarray(t))[1], np.float64)
  x = images + sigma[:, None, None, None] * rng.normal(size=images.shape).astype(np.float32)
  got = wrn.get_log_prob_fn(variables, sde, centered=False, model=model)(jnp.asarray(x), jnp.asarray(t))
  expected = log_softmax(official_logits(params, x, sigma))
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4 * np.abs(expected).max())
  assert np.abs(expected - expected.mean(0)).max() > 0.1  # the inputs and noise levels are told apart


def test_converter_refuses_another_architecture(checkpoint):
  path, _ = checkpoint
  with pytest.raises(ValueError, match='Not a WideResnet.*no official parameter for'):
    wrn.from_official_flax(str(path), wrn.WideResnet(blocks_per_group=3, channel_multiplier=K), image_shape=(8, 8, 3))
  with pytest.raises(ValueError, match='has shape'):
    wrn.from_official_flax(str(path), wrn.WideResnet(blocks_per_group=BLOCKS, channel_multiplier=2),
                           image_shape=(8, 8, 3))


def test_the_official_size_is_registered():
  from score_sde import models
  assert models.utils.get_model_class('wideresnet_noise_conditional') is wrn.WideResnet
  shapes = wrn.abstract_params(wrn.WideResnet())  # WideResnet(4, 10, 10) on 32×32×3, as the official classifier
  assert shapes['WideResnetGroup_2']['WideResnetBlock_3']['conv2']['kernel'].shape == (3, 3, 640, 640)
  assert shapes['Dense_2']['kernel'].shape == (640, 10)
