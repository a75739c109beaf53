"""The model registry and the seam from a network to a score function s(x, t)."""
import flax

from score_sde import config_table

_MODELS = {}


def register_model(cls=None, *, name=None):
  """Class decorator: registers a flax Module under `name` (default: class name)."""
  def _register(cls):
    key = name or cls.__name__
    if key in _MODELS:
      raise ValueError(f'Model {key!r} is already registered.')
    _MODELS[key] = cls
    return cls
  return _register if cls is None else _register(cls)


def model_names():
  return sorted(_MODELS)


def get_model_class(name):
  if name not in _MODELS:
    raise ValueError(f'Unknown model {name!r}; known: {model_names()}.')
  return _MODELS[name]


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

  def __call__(self, x, t, rng=None):
    time_cond = time_condition(self.sde, t, self.continuous)
    rngs = {'dropout': rng} if (self.train and rng is not None) else {}
    output = self.model.apply(self.variables, x, time_cond, train=self.train, rngs=rngs)
    return output_to_score(self.sde, output, t, time_cond, self.continuous)


def get_score_fn(sde, model, variables, train=False, continuous=False):
  """score_fn(x, t, rng=None) with the official label and scaling conventions."""
  return ScoreFn(variables=variables, sde=sde, model=model, train=train, continuous=continuous)
