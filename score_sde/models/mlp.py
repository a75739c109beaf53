"""A small time-conditioned MLP score network for low-dimensional toy data."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from score_sde.models import layers
from score_sde.models.utils import register_model


@register_model(name='mlp')
class MLP(nn.Module):
  """x (batch, D) and the official time input → a (batch, D) output.

  The time input is embedded as in NCSN++: Gaussian Fourier features of log σ
  ('fourier', for VE) or the DDPM sinusoidal embedding ('positional'). With model.num_classes > 0 the
  class embedding (layers.class_embedding; class_labels None = the null label) is added to it.
  """
  config: ml_collections.ConfigDict

  takes_images = False  # vector data (batch, D): the toy datasets
  takes_class_labels = True  # model.num_classes > 0: class_labels=

  @nn.compact
  def __call__(self, x, time_cond, train=False, class_labels=None):
    m = self.config.model
    act = layers.get_act(self.config)
    if m.embedding_type == 'fourier':
      temb = layers.GaussianFourierProjection(embedding_size=m.nf, scale=m.fourier_scale)(jnp.log(time_cond))
    elif m.embedding_type == 'positional':
      temb = layers.get_timestep_embedding(time_cond, m.nf)
    else:
      raise ValueError(f'Unknown embedding_type {m.embedding_type!r}; known: fourier, positional.')
    class_emb = layers.class_embedding(self.config, class_labels, x.shape[0], temb.shape[-1])
    if class_emb is not None:
      temb = temb + class_emb
    temb = nn.Dense(m.nf * 2)(act(nn.Dense(m.nf * 2)(temb)))
    h = nn.Dense(m.nf * 2)(x)
    for _ in range(m.num_layers):
      h = act(h + temb)
      h = nn.Dense(m.nf * 2)(h)
    h = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(act(h))  # like init_scale=0
    if m.scale_by_sigma:
      h = h / time_cond.reshape((-1,) + (1,) * (x.ndim - 1))
    return h
