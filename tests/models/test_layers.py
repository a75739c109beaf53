"""GroupNorm and Dropout of score_sde.models.layers against their definitions (float64 numpy, statistics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import layers


def _group_norm_float64(x, groups, scale, bias, eps):
  """The definition: per sample and group, (x - mean) / sqrt(var + eps) over the pixels and the group's channels."""
  x = np.asarray(x, np.float64)
  grouped = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = grouped.var(axis=(1, 3), keepdims=True)
  normed = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return normed * scale + bias


@pytest.mark.parametrize('shape, groups, eps', [((3, 5, 4, 12), 3, 1e-6), ((2, 4, 4, 64), 16, 1e-6),
                                                ((2, 7, 8), 4, 1e-5)])
def test_group_norm_matches_its_definition(shape, groups, eps):
  rng = np.random.default_rng(0)
  x = (3. + 2. * rng.standard_normal(shape)).astype(np.float32)  # an offset: E[x^2] - E[x]^2 must not cancel badly
  scale, bias = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
  module = layers.GroupNorm(num_groups=groups, epsilon=eps)
  params = {'params': {'scale': jnp.asarray(scale, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}}
  assert jax.tree.map(jnp.shape, module.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
  y = module.apply(params, x)
  expected = _group_norm_float64(x, groups, scale, bias, eps)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5 * np.abs(expected).max())


def _dropout(rate, x, seed=0, deterministic=False):
  return layers.Dropout(rate).apply({}, x, deterministic=deterministic, rngs={'dropout': jax.random.PRNGKey(seed)})


@pytest.mark.parametrize('rate', [0.1, 0.5, 0.3])
def test_dropout_keeps_each_value_with_its_probability(rate):
  x = jnp.asarray(np.random.default_rng(1).uniform(1., 2., (8, 16, 16, 7)), jnp.float32)  # odd size: 14,336
  y = np.asarray(_dropout(rate, x))
  keep = round((1 - rate) * 2 ** 16) / 2 ** 16
  assert abs(keep - (1 - rate)) <= 2 ** -17
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / keep, rtol=1e-6)  # kept values are rescaled exactly
  n = x.size
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  flat = kept.reshape(-1).astype(float)  # the two 16-bit halves of each random word must be independent
  half = n // 2
  assert abs(np.corrcoef(flat[:half], flat[half:2 * half])[0, 1]) < 5 / np.sqrt(half)
  assert not np.array_equal(kept, np.asarray(_dropout(rate, x, seed=1)) != 0)


def test_dropout_edges():
  x = jnp.arange(1., 11.)
  np.testing.assert_array_equal(_dropout(0.5, x, deterministic=True), x)
  np.testing.assert_array_equal(_dropout(0., x), x)
  np.testing.assert_array_equal(_dropout(1., x), jnp.zeros_like(x))
