"""The model registry and the seam from a network to a score function s(x, t)."""
import flax

from score_sde import config_table
from score_sde.models import preconditioning
from score_sde.registry import Registry

MODELS = Registry('model.name', case_sensitive=True)  # name -> flax Module class taking `config`


def register_model(cls=None, *, name=None):
  """Class decorator: registers a flax Module under `name` (default: class name)."""
  def _register(cls):
    return MODELS.register(name or cls.__name__, cls)
  return _register if cls is None else _register(cls)


def model_names():
  return MODELS.names()


def get_model_class(name):
  return MODELS.get(name)


def get_model(config):
  """The flax Module named by `config.model.name`, configured by `config`."""
  # A config made in user code (e.g. an official file loaded by hand) gets the fields it lacks.
  return get_model_class(config.model.name)(config=config_table.with_defaults(config))


def check_unet_config(config):
  """Image U-Nets halve the resolution len(ch_mult) - 1 times."""
  name = config.model.name
  levels = len(config.model.ch_mult) - 1
  if config.data.image_size % (2 ** levels):
    raise ValueError(f'Model {name} halves the resolution {levels} times (ch_mult={tuple(config.model.ch_mult)}), '
                     f'so data.image_size={config.data.image_size} must be a multiple of {2 ** levels}.')


def time_condition(sde, t, continuous):
  """The time input the official networks receive for SDE time `t` (the SDE knows its convention)."""
  return sde.time_condition(t, continuous)


def output_to_score(sde, output, t, time_cond, continuous):
  """Turns the raw network output into the score (the SDE knows what its networks output)."""
  return sde.output_to_score(output, t, time_cond, continuous)


@flax.struct.dataclass
class ScoreFn:
  """s_θ(x, t) for given variables: a pytree, so new parameters reuse compiled code."""
  variables: dict
  sde: object = flax.struct.field(pytree_node=False)
  model: object = flax.struct.field(pytree_node=False)
  train: bool = flax.struct.field(pytree_node=False, default=False)
  continuous: bool = flax.struct.field(pytree_node=False, default=False)
  # 'score': the official conventions above; 'edm' | 'vp' | 've': EDM's preconditioned denoiser
  # (models/preconditioning.py), with noise_input 'log' | 'value' the network's way of taking c_noise.
  parametrization: str = flax.struct.field(pytree_node=False, default='score')
  sigma_data: float = flax.struct.field(pytree_node=False, default=0.5)
  noise_input: str = flax.struct.field(pytree_node=False, default='value')

  def __call__(self, x, t, rng=None):
    if self.parametrization != 'score':
      return self._preconditioned(x, t, rng)[0]
    time_cond = time_condition(self.sde, t, self.continuous)
    rngs = {'dropout': rng} if (self.train and rng is not None) else {}
    output = self.model.apply(self.variables, x, time_cond, train=self.train, rngs=rngs)
    return output_to_score(self.sde, output, t, time_cond, self.continuous)

  def denoise(self, x, t, rng=None):
    """x̂_0 = E[x_0 | x_t]: D(x̃; σ̃) itself when preconditioned, else (x + σ² s)/α (Tweedie)."""
    if self.parametrization != 'score':
      return self._preconditioned(x, t, rng)[1]
    alpha, sigma = self.sde.marginal_coeffs(t)
    score = self(x, t, rng=rng)
    return _bmul(1. / alpha, x + _bmul(sigma ** 2, score))

  def _preconditioned(self, x, t, rng):
    """(s, D) of D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃, c_noise), with x̃ = x/α and σ̃ = σ/α."""
    alpha, sigma = self.sde.marginal_coeffs(t)
    sigma_tilde = sigma / alpha
    coeffs = preconditioning.coefficients(self.parametrization, sigma_tilde, self.sde, self.sigma_data)
    x_tilde = _bmul(1. / alpha, x)
    noise = preconditioning.network_noise_input(self.parametrization, coeffs, sigma_tilde, self.noise_input)
    rngs = {'dropout': rng} if (self.train and rng is not None) else {}
    output = self.model.apply(self.variables, _bmul(coeffs.c_in, x_tilde), noise, train=self.train, rngs=rngs)
    return (preconditioning.score(coeffs, x_tilde, output, alpha, sigma_tilde),
            preconditioning.denoiser(coeffs, x_tilde, output))


def _bmul(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def model_field(model, name, default):
  """config.model.<name> of a network built from a config; `default` for a bare module (tests, user code)."""
  return getattr(getattr(getattr(model, 'config', None), 'model', None), name, default)


def get_score_fn(sde, model, variables, train=False, continuous=False, parametrization=None, sigma_data=None):
  """score_fn(x, t, rng=None) with the official label and scaling conventions.

  parametrization: 'score' (the official network output) | 'edm' | 'vp' | 've' (EDM's Table 1 wrappers,
  models/preconditioning.py); None reads model.config.model.parametrization ('score' when the model has no
  config). sigma_data: σ_d of 'edm'; None reads model.config.model.sigma_data (else 0.5).
  With 'score' the score function is exactly today's.
  """
  if parametrization is None:
    parametrization = model_field(model, 'parametrization', 'score')
  if sigma_data is None:
    sigma_data = model_field(model, 'sigma_data', 0.5)
  preconditioning.check_parametrization(parametrization, sigma_data)
  if parametrization == 'score':
    return ScoreFn(variables=variables, sde=sde, model=model, train=train, continuous=continuous)
  config = getattr(model, 'config', None)
  noise_input = preconditioning.noise_input_kind(config) if parametrization == 'edm' and config is not None else 'value'
  return ScoreFn(variables=variables, sde=sde, model=model, train=train, continuous=continuous,
                 parametrization=parametrization, sigma_data=float(sigma_data), noise_input=noise_input)
