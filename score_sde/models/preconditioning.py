"""EDM's preconditionings (Karras et al. 2022, Table 1) as a wrapper at the score-function seam.

EDM's variables. Every SDE here has the Gaussian kernel x_t = α(t) x_0 + σ(t) z.
With x̃ = x/α and σ̃ = σ/α = e^{-λ} it reads x̃ = x_0 + σ̃ z: EDM's
VE form, whatever the SDE. So one wrapper serves VE, VP, sub-VP and the EDM SDE alike.

The wrapper. A network F becomes the denoiser

    D(x̃; σ̃) = c_skip(σ̃) x̃ + c_out(σ̃) F(c_in(σ̃) x̃, c_noise(σ̃)),

which estimates E[x_0 | x_t]. Tweedie's formula x̂_0 = (x + σ² s)/α then gives the score:

    s = (α D − x)/σ² = (D − x̃)/(α σ̃²) = (c_out F − (1 − c_skip) x̃)/(α σ̃²).

The seam evaluates the last form, with 1 − c_skip in closed form (`skip_gap`). Subtracting x from α D
would cancel almost every digit at small σ̃.

Table 1 (σ below is σ̃):

| | c_skip | c_out | c_in | c_noise |
|---|---|---|---|---|
| 'edm' | σ_d²/(σ² + σ_d²) | σ σ_d/√(σ² + σ_d²) | 1/√(σ² + σ_d²) | ¼ ln σ |
| 'vp' | 1 | −σ | 1/√(σ² + 1) | (M − 1) σ⁻¹_VP(σ) |
| 've' | 1 | σ | 1 | ln(½ σ) |

Here σ_VP(t) = √(exp(½ β_d t² + β_min t) − 1), with β_d = β_max − β_min, and M = 1000.

'edm' is EDM's own design. c_in and c_out give the network's input and its effective target
(x_0 − c_skip x̃)/c_out unit variance when the data have standard deviation σ_d, and c_skip minimises c_out.

'vp' and 've' restate the paper's networks in this form. For the VP SDE, α² + σ² = 1, so c_in x̃ = x.
The score (c_out F)/(α σ̃²) is then −F/σ, today's noise-predicting network. For VE, α = 1, so the
score is F/σ, today's NCSN++ with scale_by_sigma. In both cases F is the same network on the same weights.

c_noise in each network's own convention (`network_noise_input`):
- 'edm': c_noise = ¼ ln σ̃. A network that embeds the log of its noise input (NCSN++ with Fourier features,
  the MLP with Fourier features) gets exp(c_noise) = σ̃^{1/4}, so that its log is ¼ ln σ̃. A network with a
  positional embedding (DDPM, DDPM++, the MLP with 'positional') gets ¼ ln σ̃ itself.
- 'vp': (M − 1) σ⁻¹_VP(σ̃) = 999 t on the VP SDE, the input the paper's VP networks take.
- 've': σ̃. The paper's NCSN++ takes σ and embeds ln σ. EDM's ln(½ σ̃) is the same quantity in EDM's own
  Fourier layer, which embeds its input as it is.

The EDM loss weight λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² = 1/c_out² of 'edm'. With the ideal denoiser for data
N(0, σ_d² I), namely F ≡ 0, the loss λ ‖D − x_0‖² has expectation exactly 1 per dimension at every σ̃.
"""
from typing import Any, NamedTuple

import jax.numpy as jnp

PARAMETRIZATIONS = ('score', 'edm', 'vp', 've')  # 'score': the network as the official code reads it


class Coefficients(NamedTuple):
  """Table 1's coefficients at σ̃ (arrays shaped like σ̃), and skip_gap = 1 − c_skip in closed form."""
  c_skip: Any
  c_out: Any
  c_in: Any
  c_noise: Any  # in EDM's own network convention; network_noise_input converts it
  skip_gap: Any


def edm(sigma, sigma_data=0.5):
  """EDM's preconditioning.

  c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ.
  Also skip_gap = 1 − c_skip = σ²/(σ² + σ_d²).
  """
  sigma = jnp.asarray(sigma)
  total = sigma ** 2 + sigma_data ** 2
  return Coefficients(c_skip=sigma_data ** 2 / total, c_out=sigma * sigma_data / jnp.sqrt(total),
                      c_in=1. / jnp.sqrt(total), c_noise=0.25 * jnp.log(sigma), skip_gap=sigma ** 2 / total)


def vp_sigma_inverse(sigma, beta_d=19.9, beta_min=0.1):
  """σ⁻¹_VP(σ) = (√(β_min² + 2 β_d ln(1 + σ²)) − β_min)/β_d, the VP time of the noise level σ̃."""
  return (jnp.sqrt(beta_min ** 2 + 2. * beta_d * jnp.log1p(sigma ** 2)) - beta_min) / beta_d


def vp(sigma, beta_d=19.9, beta_min=0.1, M=1000):
  """EDM's VP preconditioning.

  c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1), c_noise = (M − 1) σ⁻¹_VP(σ).
  """
  sigma = jnp.asarray(sigma)
  return Coefficients(c_skip=jnp.ones_like(sigma), c_out=-sigma, c_in=1. / jnp.sqrt(sigma ** 2 + 1.),
                      c_noise=(M - 1) * vp_sigma_inverse(sigma, beta_d, beta_min), skip_gap=jnp.zeros_like(sigma))


def ve(sigma):
  """EDM's VE preconditioning: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½ σ)."""
  sigma = jnp.asarray(sigma)
  return Coefficients(c_skip=jnp.ones_like(sigma), c_out=sigma, c_in=jnp.ones_like(sigma),
                      c_noise=jnp.log(0.5 * sigma), skip_gap=jnp.zeros_like(sigma))


def check_parametrization(parametrization, sigma_data=0.5):
  """Raises ValueError (one line) for an unknown parametrization or a non-positive σ_d."""
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f'model.parametrization={parametrization!r} is unknown; known: {list(PARAMETRIZATIONS)}.')
  if not sigma_data > 0:
    raise ValueError(f'model.sigma_data={sigma_data!r} must be positive (EDM uses 0.5 for data in [-1, 1]).')


def coefficients(parametrization, sigma, sde=None, sigma_data=0.5):
  """The Table 1 coefficients of 'edm', 'vp' or 've' at σ̃ = `sigma`.

  'vp' takes β_min and β_max from `sde` when it has them. Otherwise it takes EDM's 0.1 and 20.
  """
  if parametrization == 'edm':
    return edm(sigma, sigma_data)
  if parametrization == 'vp':
    beta_min, beta_max = getattr(sde, 'beta_0', 0.1), getattr(sde, 'beta_1', 20.)
    return vp(sigma, beta_max - beta_min, beta_min)
  if parametrization == 've':
    return ve(sigma)
  raise ValueError(f'parametrization={parametrization!r} has no preconditioning; known: '
                   f'{list(PARAMETRIZATIONS[1:])}.')


# How the networks here take a noise level: 'embedding' = by model.embedding_type ('fourier' embeds the log of
# its input, 'positional' the input itself); 'value' = positional embedding of the input; 'unused' = the network
# has no noise input (NCSNv2 without scale_by_sigma); the wrapper's c_in and c_out still carry σ̃.
NOISE_INPUTS = {'ncsnpp': 'embedding', 'mlp': 'embedding', 'ddpm': 'value',
                'ncsnv2_64': 'unused', 'ncsnv2_128': 'unused', 'ncsnv2_256': 'unused'}


def noise_input_kind(model_config):
  """'log' if the network embeds the log of its noise input, else 'value'.

  Raises ValueError for a network that cannot take a continuous noise level.
  """
  m = model_config.model
  kind = NOISE_INPUTS.get(m.name)
  if kind is None:
    raise ValueError("model.parametrization='edm' needs a network that takes a continuous noise "
                     f'level, one of {sorted(NOISE_INPUTS)}, not model.name={m.name!r}; set '
                     "model.parametrization='score' or pick one of those networks.")
  if kind == 'embedding':
    return 'log' if m.embedding_type.lower() == 'fourier' else 'value'
  return 'value'


def network_noise_input(parametrization, coeffs, sigma, kind='value'):
  """The noise input that a network with embedding `kind` ('log' | 'value') gets, as explained above."""
  if parametrization == 'edm':
    return jnp.exp(coeffs.c_noise) if kind == 'log' else coeffs.c_noise
  if parametrization == 'vp':
    return coeffs.c_noise
  if parametrization == 've':
    return sigma
  raise ValueError(f'parametrization={parametrization!r} has no preconditioning.')


def denoiser(coeffs, x_tilde, network_output):
  """D = c_skip x̃ + c_out F (per-example coefficients broadcast over the trailing axes)."""
  return _bmul(coeffs.c_skip, x_tilde) + _bmul(coeffs.c_out, network_output)


def score(coeffs, x_tilde, network_output, alpha, sigma):
  """s = (c_out F − (1 − c_skip) x̃)/(α σ̃²): the score whose Tweedie denoiser is D, without cancellation."""
  residual = _bmul(coeffs.c_out, network_output) - _bmul(coeffs.skip_gap, x_tilde)  # D − x̃
  return _bmul(1. / (alpha * sigma ** 2), residual)


def edm_loss_weight(sigma, sigma_data=0.5):
  """λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² (EDM eq. 8 with λ = 1/c_out²)."""
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def _bmul(a, x):
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(x) - a.ndim)) * x
