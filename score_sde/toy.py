"""Toy distributions with exact densities and exact scores of every SDE marginal.

An isotropic Gaussian mixture Σ_k w_k N(μ_k, s_k² I) pushed through a linear SDE
stays a mixture: at time t, with mean scale a(t) and noise std σ(t),
component k becomes N(a μ_k, (a² s_k² + σ²) I). That gives the score of every
marginal in closed form, an oracle for samplers and likelihoods.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  weights: tuple   # (K,)
  means: tuple     # (K, D)
  stds: tuple      # (K,) isotropic standard deviations

  @property
  def dim(self):
    return len(self.means[0])

  def _params(self):
    return (jnp.asarray(self.weights, jnp.float32), jnp.asarray(self.means, jnp.float32),
            jnp.asarray(self.stds, jnp.float32))

  def sample(self, rng, n):
    w, mu, s = self._params()
    component_rng, noise_rng = jax.random.split(rng)
    k = jax.random.choice(component_rng, len(self.weights), (n,), p=w)
    return mu[k] + s[k][:, None] * jax.random.normal(noise_rng, (n, self.dim))

  def _component_log_probs(self, x, scale, noise_std):
    """log w_k + log N(x; a μ_k, (a² s_k² + σ²) I), shape (batch, K)."""
    w, mu, s = self._params()
    var = scale[:, None] ** 2 * s[None, :] ** 2 + noise_std[:, None] ** 2
    sq = jnp.sum((x[:, None, :] - scale[:, None, None] * mu[None]) ** 2, axis=-1)
    return jnp.log(w)[None] - 0.5 * sq / var - 0.5 * self.dim * jnp.log(2 * jnp.pi * var), var

  def _scale_and_std(self, sde, t):
    mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return mean[:, 0], std

  def log_prob(self, x):
    zeros = jnp.zeros(x.shape[0])
    return jax.nn.logsumexp(self._component_log_probs(x, zeros + 1., zeros)[0], axis=-1)

  def marginal_log_prob(self, sde, x, t):
    """log q_t(x) of the SDE's marginal at time t (batch,)."""
    log_probs, _ = self._component_log_probs(x, *self._scale_and_std(sde, t))
    return jax.nn.logsumexp(log_probs, axis=-1)

  def marginal_score(self, sde):
    """The exact score ∇ log q_t(x) as a score_fn(x, t)."""
    def score_fn(x, t):
      scale, noise_std = self._scale_and_std(sde, t)
      log_probs, var = self._component_log_probs(x, scale, noise_std)
      responsibilities = jax.nn.softmax(log_probs, axis=-1)
      _, mu, _ = self._params()
      component_scores = -(x[:, None, :] - scale[:, None, None] * mu[None]) / var[..., None]
      return jnp.sum(responsibilities[..., None] * component_scores, axis=1)
    return score_fn

  def assign(self, x):
    """Index of the most probable component of each point."""
    zeros = jnp.zeros(x.shape[0])
    return np.asarray(jnp.argmax(self._component_log_probs(x, zeros + 1., zeros)[0], axis=-1))


TOY_DISTRIBUTIONS = {
    # Three well-separated components of unequal weight and width, in 2-D.
    'gmm': GaussianMixture(weights=(0.2, 0.3, 0.5),
                           means=((-3., -1.), (2., 3.), (3., -2.)),
                           stds=(0.4, 0.6, 0.5)),
    # Eight equal modes on a circle of radius 4.
    'gmm8': GaussianMixture(weights=(0.125,) * 8,
                            means=tuple((4 * np.cos(a), 4 * np.sin(a)) for a in np.arange(8) * np.pi / 4),
                            stds=(0.3,) * 8),
}


def get_toy_distribution(name):
  if name not in TOY_DISTRIBUTIONS:
    raise ValueError(f'Unknown toy distribution {name!r}; known: {sorted(TOY_DISTRIBUTIONS)}.')
  return TOY_DISTRIBUTIONS[name]
