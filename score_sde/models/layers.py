"""Layers shared by the score networks."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """Sinusoidal embedding of DDPM: [sin(l·f_i), cos(l·f_i)], f_i = 10000^(-i/(half-1))."""
  assert timesteps.ndim == 1, timesteps.shape
  half_dim = embedding_dim // 2
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -(math.log(max_positions) / (half_dim - 1)))
  angles = timesteps[:, None].astype(jnp.float32) * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class GaussianFourierProjection(nn.Module):
  """[sin(2π x W), cos(2π x W)] with fixed random W ~ N(0, scale²)."""
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    W = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


NONLINEARITIES = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': lambda x: nn.leaky_relu(x, negative_slope=0.2),
    'swish': nn.swish,
}


def get_act(config):
  name = config.model.nonlinearity.lower()
  if name not in NONLINEARITIES:
    raise ValueError(f'Unknown nonlinearity {config.model.nonlinearity!r}; known: {sorted(NONLINEARITIES)}.')
  return NONLINEARITIES[name]
