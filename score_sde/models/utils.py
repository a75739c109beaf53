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
  """s_θ(x, t) for given variables: a pytree, so new parameters reuse compiled code.

  A class-conditional network (num_classes > 0) gives s_θ(x, t, labels): labels (batch,) int32 in
  [0, num_classes), None = the null label (the unconditional score of classifier-free guidance).
  """
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
  num_classes: int = flax.struct.field(pytree_node=False, default=0)  # model.num_classes; 0 = unconditional

  def __call__(self, x, t, labels=None, *, rng=None):
    if self.parametrization != 'score':
      return self._preconditioned(x, t, rng, labels)[0]
    time_cond = time_condition(self.sde, t, self.continuous)
    output = self._apply(x, time_cond, rng, labels)
    return output_to_score(self.sde, output, t, time_cond, self.continuous)

  def denoise(self, x, t, labels=None, *, rng=None):
    """x̂_0 = E[x_0 | x_t]: D(x̃; σ̃) itself when preconditioned, else (x + σ² s)/α (Tweedie)."""
    if self.parametrization != 'score':
      return self._preconditioned(x, t, rng, labels)[1]
    alpha, sigma = self.sde.marginal_coeffs(t)
    score = self(x, t, labels, rng=rng)
    return _bmul(1. / alpha, x + _bmul(sigma ** 2, score))

  def _apply(self, x, noise, rng, labels):
    """The network at (x, its noise input); an unconditional network is called exactly as the official code."""
    rngs = {'dropout': rng} if (self.train and rng is not None) else {}
    if not self.num_classes:
      if labels is not None:
        raise ValueError('labels given to the score of an unconditional model (model.num_classes=0).')
      return self.model.apply(self.variables, x, noise, train=self.train, rngs=rngs)
    return self.model.apply(self.variables, x, noise, train=self.train, rngs=rngs, class_labels=labels)

  def _preconditioned(self, x, t, rng, labels=None):
    """(s, D) of D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃, c_noise), with x̃ = x/α and σ̃ = σ/α."""
    alpha, sigma = self.sde.marginal_coeffs(t)
    sigma_tilde = sigma / alpha
    coeffs = preconditioning.coefficients(self.parametrization, sigma_tilde, self.sde, self.sigma_data)
    x_tilde = _bmul(1. / alpha, x)
    noise = preconditioning.network_noise_input(self.parametrization, coeffs, sigma_tilde, self.noise_input)
    output = self._apply(_bmul(coeffs.c_in, x_tilde), noise, rng, labels)
    return (preconditioning.score(coeffs, x_tilde, output, alpha, sigma_tilde),
            preconditioning.denoiser(coeffs, x_tilde, output))


def _bmul(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def model_field(model, name, default):
  """config.model.<name> of a network built from a config; `default` for a bare module (tests, user code)."""
  return getattr(getattr(getattr(model, 'config', None), 'model', None), name, default)


def get_score_fn(sde, model, variables, train=False, continuous=False, parametrization=None, sigma_data=None):
  """score_fn(x, t, *, rng=None) with the official label and scaling conventions; for a class-conditional model
  (model.num_classes > 0) score_fn(x, t, labels=None, *, rng=None), labels None = the null label.

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
  num_classes = int(model_field(model, 'num_classes', 0))
  if parametrization == 'score':
    return ScoreFn(variables=variables, sde=sde, model=model, train=train, continuous=continuous,
                   num_classes=num_classes)
  config = getattr(model, 'config', None)
  noise_input = preconditioning.noise_input_kind(config) if parametrization == 'edm' and config is not None else 'value'
  return ScoreFn(variables=variables, sde=sde, model=model, train=train, continuous=continuous,
                 parametrization=parametrization, sigma_data=float(sigma_data), noise_input=noise_input,
                 num_classes=num_classes)
