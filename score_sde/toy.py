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
    return self.sample_with_labels(rng, n)[0]

  def sample_with_labels(self, rng, n):
    """(x, k): n draws and the component each came from, its class label (int32)."""
    w, mu, s = self._params()
    component_rng, noise_rng = jax.random.split(rng)
    k = jax.random.choice(component_rng, len(self.weights), (n,), p=w)
    return mu[k] + s[k][:, None] * jax.random.normal(noise_rng, (n, self.dim)), k.astype(jnp.int32)

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

  def conditional_score(self, sde):
    """The exact class-conditional score as score_fn(x, t, labels=None): ∇ log q_t(x | y) of component y,
    -(x - a μ_y) / (a² s_y² + σ²); labels None is the null label, the whole mixture's score."""
    marginal = self.marginal_score(sde)

    def score_fn(x, t, labels=None):
      if labels is None:
        return marginal(x, t)
      scale, noise_std = self._scale_and_std(sde, t)
      _, mu, s = self._params()
      var = scale ** 2 * s[labels] ** 2 + noise_std ** 2
      return -(x - scale[:, None] * mu[labels]) / var[:, None]
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


def mixture_report(samples, mixture, rng, n_reference=None):
  """How well `samples` reproduce `mixture`: per-component weight, mean and std, and per-dim KS.

  Each sample goes to its most probable component. Means are reported in units of
  that component's std; stds as ratios. KS is the two-sample statistic against
  fresh draws of the mixture (as many as there are samples).
  """
  from scipy import stats
  samples = np.asarray(samples, np.float64)
  reference = np.asarray(mixture.sample(rng, n_reference or len(samples)), np.float64)
  assignment = mixture.assign(jnp.asarray(samples, jnp.float32))
  means, stds = np.asarray(mixture.means), np.asarray(mixture.stds)
  report = {'weight_error': [], 'mean_error_in_stds': [], 'std_ratio': [],
            'ks': [stats.ks_2samp(samples[:, d], reference[:, d]).statistic for d in range(samples.shape[1])],
            'finite': bool(np.all(np.isfinite(samples)))}
  for k, weight in enumerate(mixture.weights):
    members = samples[assignment == k]
    report['weight_error'].append(abs(len(members) / len(samples) - weight))
    if len(members) < 2:
      report['mean_error_in_stds'].append(np.inf)
      report['std_ratio'].append(0.)
      continue
    report['mean_error_in_stds'].append(np.abs(members.mean(0) - means[k]).max() / stds[k])
    report['std_ratio'].append((members.std(0) / stds[k]).tolist())
  return report


def mixture_failures(report, weight_tol=0.03, mean_tol=0.15, std_tol=0.12, ks_tol=0.05):
  """The bounds a mixture_report breaks, as readable strings (empty when it passes)."""
  failures = [] if report['finite'] else ['non-finite samples']
  for k, (w, m, s) in enumerate(zip(report['weight_error'], report['mean_error_in_stds'], report['std_ratio'])):
    if w > weight_tol:
      failures.append(f'component {k}: weight off by {w:.3f} > {weight_tol}')
    if m > mean_tol:
      failures.append(f'component {k}: mean off by {m:.3f} stds > {mean_tol}')
    if np.any(np.abs(np.asarray(s) - 1) > std_tol):
      failures.append(f'component {k}: std ratio {s} beyond 1 ± {std_tol}')
  failures += [f'dim {d}: KS {ks:.3f} > {ks_tol}' for d, ks in enumerate(report['ks']) if ks > ks_tol]
  return failures
