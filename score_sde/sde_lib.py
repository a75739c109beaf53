"""Forward SDEs of Song et al. (2021): VE, VP and sub-VP, and their reverses.

Every method works on a batch `x` of any shape `(batch, ...)` with `t` of shape
`(batch,)`. Per-example scalars are broadcast over the trailing dimensions.
"""
import abc

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.registry import Registry

SDES = Registry('training.sde')  # name -> SDE class; each class builds itself with from_config(config)


def batch_mul(a, x):
  """Multiplies the per-example scalars `a` (batch,) into `x` (batch, ...)."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(x) - a.ndim)) * x


def _sum_except_batch(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class SDE(abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T], discretised into N steps."""

  def __init__(self, N):
    self.N = N

  @property
  @abc.abstractmethod
  def T(self):
    """End time of the SDE."""

  @abc.abstractmethod
  def sde(self, x, t):
    """Returns the drift f(x, t) (shaped like x) and diffusion g(t) (batch,)."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Mean and std (batch,) of the perturbation kernel p_0t(x(t) | x(0) = x)."""

  @abc.abstractmethod
  def prior_sampling(self, rng, shape):
    """Draws from the prior p_T."""

  @abc.abstractmethod
  def prior_logp(self, z):
    """log p_T(z) per example, shape (batch,)."""

  def discretize(self, x, t):
    """Euler–Maruyama: x_{i+1} = x_i + f_i + G_i z_i with f_i = f dt, G_i = g sqrt(dt)."""
    dt = 1. / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def timestep_index(self, t):
    """Index of the discrete step that `t` falls in, as the official code rounds it."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def reverse(self, score_fn, probability_flow=False):
    """The reverse-time SDE (Eq. 6), or the probability-flow ODE (Eq. 13)."""
    return ReverseSDE(self, score_fn, probability_flow)

  # The Gaussian kernel x_t = α(t) x_0 + σ(t) z, for the few-step samplers.
  def marginal_coeffs(self, t):
    """(α(t), σ(t)), each (batch,)."""
    raise NotImplementedError(f'{type(self).__name__} does not tell its Gaussian kernel (marginal_coeffs).')

  def log_snr(self, t):
    """λ(t) = log(α/σ)."""
    raise NotImplementedError(f'{type(self).__name__} does not tell its log-SNR (log_snr).')

  def t_from_log_snr(self, lam):
    """The inverse of log_snr."""
    raise NotImplementedError(f'{type(self).__name__} does not tell the inverse of its log-SNR (t_from_log_snr).')

  # Importance-sampled time (score_flow, Song et al. 2021): p(t) = g(t)² / (σ(t)² Z) on [eps, T]. With it,
  # E_{t~U[eps,T]}[g² ‖s + z/σ‖²] = Z/(T - eps) · E_{t~p}[‖σ s + z‖²]: the likelihood-weighted loss is the plain
  # noise-prediction loss with t drawn from p(t), times a constant.
  def importance_sampling_norm(self, eps):
    """Z = ∫_eps^T g(t)²/σ(t)² dt, the normaliser of p(t) ∝ g²/σ²."""
    raise NotImplementedError(f'{type(self).__name__} has no closed-form importance-sampled time '
                              '(importance_sampling_norm).')

  def importance_sampling_t(self, u, eps):
    """t = F⁻¹(u) for u in [0, 1] (any shape), F(t) = ∫_eps^t g²/σ² ds / Z the CDF of p(t) on [eps, T]."""
    raise NotImplementedError(f'{type(self).__name__} has no closed-form importance-sampled time '
                              '(importance_sampling_t).')

  # Sampling end time of the official run_lib.
  default_sampling_eps = 1e-3

  # The discrete chain the SDE is the limit of.
  has_ancestral_chain = False  # ancestral_step is defined
  discrete_objective = None    # 'smld' | 'ddpm': the discrete training loss of losses.py

  def ancestral_step(self, x, t, score):
    """One ancestral step of the discrete chain: (x_mean, std) with x = x_mean + std z."""
    raise NotImplementedError(f'{type(self).__name__} has no discrete chain for ancestral sampling.')

  def langevin_alpha(self, t):
    """α_i of the discrete chain in the Langevin step size (Alg. 4–5 of the paper); 1 without a chain."""
    return jnp.ones_like(t)

  # How the official networks see time and what they output (the score-function seam of models/utils.py).
  def time_condition(self, t, continuous):
    """The time input the official networks receive for SDE time `t`."""
    raise NotImplementedError(f'SDE class {type(self).__name__} not yet supported.')

  def output_to_score(self, output, t, time_cond, continuous):
    """The score from the raw network output (default: the network outputs the score)."""
    return output


class ReverseSDE:
  """dx = [f - g^2 score] dt + g dw̄, or the ODE dx = [f - ½ g^2 score] dt."""

  def __init__(self, forward, score_fn, probability_flow):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N
    self.T = forward.T

  def _reverse(self, f, g, x, t):
    weight = 0.5 if self.probability_flow else 1.
    f = f - batch_mul(g ** 2 * weight, self.score_fn(x, t))
    g = jnp.zeros_like(g) if self.probability_flow else g
    return f, g

  def sde(self, x, t):
    return self._reverse(*self.forward.sde(x, t), x, t)

  def discretize(self, x, t):
    return self._reverse(*self.forward.discretize(x, t), x, t)


class _UnitPrior:
  """Standard normal prior, shared by the VP and sub-VP SDEs."""

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    D = np.prod(z.shape[1:])
    return -D / 2. * np.log(2 * np.pi) - _sum_except_batch(z ** 2) / 2.


class _WidePrior:
  """N(0, σ_max² I) prior, shared by the VE and EDM SDEs."""

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    D = np.prod(z.shape[1:])
    return (-D / 2. * np.log(2 * np.pi * self.sigma_max ** 2)
            - _sum_except_batch(z ** 2) / (2 * self.sigma_max ** 2))


class _LinearBeta(_UnitPrior, SDE):
  """β(t) = β_min + t (β_max - β_min) on [0, 1], with the discrete DDPM chain β_i = β(i/N)/N."""

  def __init__(self, beta_min=0.1, beta_max=20., N=1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    self.discrete_betas = jnp.linspace(beta_min / N, beta_max / N, N)
    self.alphas = 1. - self.discrete_betas

  @classmethod
  def from_config(cls, config):
    m = config.model
    return cls(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)

  @property
  def T(self):
    return 1.

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t):
    """log of the mean scale: -∫_0^t β(s) ds / 2."""
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def t_from_log_alpha(self, log_alpha):
    """Root of ¼ Δβ t² + ½ β_min t + log α = 0, in the form that does not cancel near t = 0."""
    half_b = 0.5 * self.beta_0
    return -2. * log_alpha / (half_b + jnp.sqrt(half_b ** 2 - (self.beta_1 - self.beta_0) * log_alpha))

  def integrated_beta(self, t):
    """B(t) = ∫_0^t β = β_min t + ½ (β_max - β_min) t², so α = e^{-B/2}."""
    return -2. * self.log_mean_coeff(t)

  def _t_from_integrated_beta(self, B, eps):
    """t with B(t) = B, t = 2B / (β_min + sqrt(β_min² + 2 Δβ B)) (no cancellation at small B), kept in [eps, T]."""
    return jnp.clip(self.t_from_log_alpha(-0.5 * B), eps, self.T)

  def langevin_alpha(self, t):
    return self.alphas[self.timestep_index(t)]

  def time_condition(self, t, continuous):
    """DDPM-style networks take the (float) step index; continuous models use 999 t."""
    return t * 999 if continuous else t * (self.N - 1)

  def output_to_score(self, output, t, time_cond, continuous):
    """The network predicts the noise z; score = -z / std."""
    return batch_mul(-1. / self.marginal_prob(jnp.zeros_like(output), t)[1], output)


@SDES.register('vpsde')
class VPSDE(_LinearBeta):
  """Variance preserving: dx = -½ β(t) x dt + sqrt(β(t)) dw."""

  def __init__(self, beta_min=0.1, beta_max=20., N=1000):
    super().__init__(beta_min, beta_max, N)
    self.alphas_cumprod = jnp.cumprod(self.alphas, axis=0)
    self.sqrt_alphas_cumprod = jnp.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = jnp.sqrt(1. - self.alphas_cumprod)

  def sde(self, x, t):
    beta_t = self.beta(t)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    log_mean_coeff = self.log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x)
    std = jnp.sqrt(1. - jnp.exp(2. * log_mean_coeff))
    return mean, std

  def discretize(self, x, t):
    """DDPM rule: x_i = sqrt(1 - β_i) x_{i-1} + sqrt(β_i) z."""
    i = self.timestep_index(t)
    beta = self.discrete_betas[i]
    alpha = self.alphas[i]
    f = batch_mul(jnp.sqrt(alpha), x) - x
    return f, jnp.sqrt(beta)

  def marginal_coeffs(self, t):
    """α = exp(log α), σ = sqrt(1 - α²) = sqrt(-expm1(2 log α))."""
    log_alpha = self.log_mean_coeff(t)
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2. * log_alpha))

  def log_snr(self, t):
    log_alpha = self.log_mean_coeff(t)
    return log_alpha - 0.5 * jnp.log(-jnp.expm1(2. * log_alpha))

  def t_from_log_snr(self, lam):
    """log α = -½ log(1 + e^{-2λ}), then the quadratic in t."""
    return self.t_from_log_alpha(-0.5 * jax.nn.softplus(-2. * lam))

  def _log_inverse_snr(self, t):
    """γ(t) = log(σ²/α²) = log(e^B - 1), via expm1 (γ(1e-5) = -13.8 for β 0.1–20)."""
    return jnp.log(jnp.expm1(self.integrated_beta(jnp.asarray(t, jnp.float32))))

  def importance_sampling_norm(self, eps):
    """g²/σ² = β / (1 - e^{-B}) = dγ/dt with γ = log(e^B - 1), so Z = γ(T) - γ(eps) (23.86 for β 0.1–20, eps 1e-5)."""
    return self._log_inverse_snr(self.T) - self._log_inverse_snr(eps)

  def importance_sampling_t(self, u, eps):
    """p(t) is uniform in log-SNR: γ = γ(eps) + u Z, B = log(1 + e^γ) = softplus(γ), then t from B."""
    gamma_eps = self._log_inverse_snr(eps)
    gamma = gamma_eps + jnp.asarray(u, jnp.float32) * (self._log_inverse_snr(self.T) - gamma_eps)
    return self._t_from_integrated_beta(jax.nn.softplus(gamma), eps)

  has_ancestral_chain = True
  discrete_objective = 'ddpm'

  def ancestral_step(self, x, t, score):
    """DDPM (Eq. 7 of Ho et al.): x ← (x + β_i s) / sqrt(1 - β_i) + sqrt(β_i) z."""
    beta = self.discrete_betas[self.timestep_index(t)]
    return batch_mul(1. / jnp.sqrt(1. - beta), x + batch_mul(beta, score)), jnp.sqrt(beta)

  def output_to_score(self, output, t, time_cond, continuous):
    """Discrete DDPM networks: std from the table at the step index."""
    if continuous:
      return super().output_to_score(output, t, time_cond, continuous)
    return batch_mul(-1. / self.sqrt_1m_alphas_cumprod[time_cond.astype(jnp.int32)], output)


@SDES.register('subvpsde')
class subVPSDE(_LinearBeta):
  """Sub-VP: the VP drift with diffusion β(t)(1 - exp(-2∫β)), Eq. 29.

  Its discrete β_i, α_i (shared with VP) serve only the Langevin correctors' step size;
  the official code lacks them, so its correctors fail on sub-VP.
  """

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = 1. - jnp.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    log_mean_coeff = self.log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x)
    std = 1. - jnp.exp(2. * log_mean_coeff)
    return mean, std

  def marginal_coeffs(self, t):
    """α = exp(log α), σ = 1 - α² = -expm1(2 log α)."""
    log_alpha = self.log_mean_coeff(t)
    return jnp.exp(log_alpha), -jnp.expm1(2. * log_alpha)

  def log_snr(self, t):
    log_alpha = self.log_mean_coeff(t)
    return log_alpha - jnp.log(-jnp.expm1(2. * log_alpha))

  def t_from_log_snr(self, lam):
    """α = (-1 + sqrt(1 + 4 e^{2λ})) / (2 e^λ) = 2 / (e^{-λ} + sqrt(e^{-2λ} + 4)), so log α = -asinh(e^{-λ}/2):
    no cancellation near T (α → 0) nor near 0 (α → 1)."""
    return self.t_from_log_alpha(-jnp.arcsinh(0.5 * jnp.exp(-lam)))

  def _log_cdf_potential(self, t):
    """F = 2 log(e^B - 1) - B = log(2 cosh B - 2), via expm1; dF/dt = β (1 + e^{-B}) / (1 - e^{-B}) = g²/σ²."""
    B = self.integrated_beta(jnp.asarray(t, jnp.float32))
    return 2. * jnp.log(jnp.expm1(B)) - B

  def importance_sampling_norm(self, eps):
    """g² = β (1 - e^{-2B}), σ² = (1 - e^{-B})², so g²/σ² = dF/dt, Z = F(T) - F(eps) (37.68: β 0.1–20, eps 1e-5)."""
    return self._log_cdf_potential(self.T) - self._log_cdf_potential(eps)

  def importance_sampling_t(self, u, eps):
    """F = F(eps) + u Z, then B = 2 asinh(e^{F/2} / 2) (e^F = 4 sinh²(B/2)); the equal arccosh(1 + e^F/2) rounds
    to B = 0 in float32 for a third of the draws, the asinh form does not."""
    F_eps = self._log_cdf_potential(eps)
    F = F_eps + jnp.asarray(u, jnp.float32) * (self._log_cdf_potential(self.T) - F_eps)
    return self._t_from_integrated_beta(2. * jnp.arcsinh(0.5 * jnp.exp(0.5 * F)), eps)

  def time_condition(self, t, continuous):
    """Sub-VP networks are always continuous: 999 t."""
    return t * 999


@SDES.register('vesde')
class VESDE(_WidePrior, SDE):
  """Variance exploding: dx = sqrt(d σ²(t)/dt) dw with σ(t) = σ_min (σ_max/σ_min)^t."""

  def __init__(self, sigma_min=0.01, sigma_max=50., N=1000):
    super().__init__(N)
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    # The ascending SMLD noise levels that this SDE is the limit of.
    self.discrete_sigmas = jnp.exp(jnp.linspace(np.log(sigma_min), np.log(sigma_max), N))

  @classmethod
  def from_config(cls, config):
    m = config.model
    return cls(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)

  @property
  def T(self):
    return 1.

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    diffusion = self.sigma(t) * jnp.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  default_sampling_eps = 1e-5

  def marginal_coeffs(self, t):
    return jnp.ones_like(t), self.sigma(t)

  def log_snr(self, t):
    return -(np.log(self.sigma_min) + t * np.log(self.sigma_max / self.sigma_min))

  def t_from_log_snr(self, lam):
    return (-lam - np.log(self.sigma_min)) / np.log(self.sigma_max / self.sigma_min)

  def importance_sampling_norm(self, eps):
    """g²/σ² = d log σ²/dt = 2 log(σ_max/σ_min) is constant, so Z = 2 log(σ_max/σ_min) (T - eps)."""
    return jnp.asarray(2. * np.log(self.sigma_max / self.sigma_min) * (self.T - eps), jnp.float32)

  def importance_sampling_t(self, u, eps):
    """p(t) is uniform on [eps, T]: t = eps + u (T - eps)."""
    return eps + jnp.asarray(u, jnp.float32) * (self.T - eps)

  has_ancestral_chain = True
  discrete_objective = 'smld'

  def ancestral_step(self, x, t, score):
    """SMLD (Eq. 47): x ← x + (σ_i² - σ_{i-1}²) s + sqrt(σ_{i-1}² (σ_i² - σ_{i-1}²) / σ_i²) z."""
    sigma, previous = self.adjacent_sigmas(t)
    x_mean = x + batch_mul(sigma ** 2 - previous ** 2, score)
    return x_mean, jnp.sqrt(previous ** 2 * (sigma ** 2 - previous ** 2) / sigma ** 2)

  def time_condition(self, t, continuous):
    if continuous:
      return self.sigma(t)  # NCSN++ embeds log σ(t)
    # SMLD networks take the index into the descending noise table.
    return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

  def adjacent_sigmas(self, t):
    """σ_i and σ_{i-1} (0 below the first level) of the step that t falls in."""
    i = self.timestep_index(t)
    sigma = self.discrete_sigmas[i]
    previous = jnp.where(i == 0, 0., self.discrete_sigmas[jnp.maximum(i - 1, 0)])
    return sigma, previous

  def discretize(self, x, t):
    """SMLD rule: x_i = x_{i-1} + sqrt(σ_i² - σ_{i-1}²) z."""
    sigma, previous = self.adjacent_sigmas(t)
    return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - previous ** 2)


def importance_sampling_norm(sde, eps, fix):
  """sde.importance_sampling_norm(eps), or a one-sentence ValueError ending with `fix` (what to change)."""
  try:
    return sde.importance_sampling_norm(eps)
  except NotImplementedError:
    raise ValueError(f'{type(sde).__name__} has no closed-form importance-sampled time; {fix}.') from None


@SDES.register('edm')
class EDMSDE(_WidePrior, SDE):
  """EDM's SDE (Karras et al. 2022): VE with σ(t) = t, dx = sqrt(2t) dw, on t in [σ_min, σ_max].

  T = σ_max and sampling ends at σ_min by default (EDM's 80 and 0.002). The kernel is α = 1, σ = t, so
  σ̃ = t, λ = -ln t and t(λ) = e^{-λ}: EDM's sampler steps on its own schedule, and the other samplers on t.
  The SDE is defined for every t > 0; training draws t below σ_min too (the loss's eps).
  Networks see σ(t) = t and output the score, as for the continuous VESDE (NCSN++ with Fourier features embeds
  ln σ; scale_by_sigma divides by σ); model.parametrization='edm' wraps them instead
  (models/preconditioning.py). It has no discrete chain: no ancestral sampling, no discrete training.
  """

  def __init__(self, sigma_min=0.002, sigma_max=80., N=1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f'The EDM SDE needs 0 < model.sigma_min < model.sigma_max, not {sigma_min} and {sigma_max}.')
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    self.default_sampling_eps = sigma_min

  @classmethod
  def from_config(cls, config):
    m = config.model
    return cls(sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), N=m.num_scales)

  @property
  def T(self):
    return self.sigma_max

  def sde(self, x, t):
    """g² = dσ²/dt = 2t."""
    return jnp.zeros_like(x), jnp.sqrt(2. * t)

  def marginal_prob(self, x, t):
    return x, t

  def discretize(self, x, t):
    """The exact VE kernel over one step Δt = T/N back from t: f = 0, G = sqrt(t² - max(t - Δt, 0)²)."""
    previous = jnp.maximum(t - self.T / self.N, 0.)
    return jnp.zeros_like(x), jnp.sqrt(t ** 2 - previous ** 2)

  def marginal_coeffs(self, t):
    return jnp.ones_like(t), t

  def log_snr(self, t):
    return -jnp.log(t)

  def t_from_log_snr(self, lam):
    return jnp.exp(-lam)

  def importance_sampling_norm(self, eps):
    """g²/σ² = 2t/t² = 2/t, so Z = 2 ln(T/eps)."""
    return jnp.asarray(2. * np.log(self.T / eps), jnp.float32)

  def importance_sampling_t(self, u, eps):
    """p(t) ∝ 1/t is log-uniform on [eps, T]: t = eps (T/eps)^u."""
    return jnp.clip(eps * jnp.exp(jnp.asarray(u, jnp.float32) * np.log(self.T / eps)), eps, self.T)

  def time_condition(self, t, continuous):
    """σ(t) = t, continuous or not (there is no discrete chain to index)."""
    return t


def get_sde(config):
  """Builds the SDE named by `config.training.sde` from its `config.model` parameters."""
  return SDES.get(config.training.sde).from_config(config)
