"""One registry of samplers by name; each factory builds from its options or from `config.sampling`."""
import inspect

from score_sde import config_table
from score_sde.registry import Registry

SAMPLERS = Registry('sampling.method')  # name -> factory(sde, shape, **options) -> sampler
_NOT_OPTIONS = ('sde', 'shape', 'eps', 'inverse_scaler', 'sharding', 'randn_like')
_ALIASES = {'denoise': 'noise_removal'}  # option -> official config.sampling field


def register_sampler(name, aliases=None):
  """Decorator for `factory(sde, shape, ..., eps=None, inverse_scaler=None, sharding=None) -> sampler`.

  From a config, each keyword option of the factory is read from the config.sampling field of the same
  name (or the one `aliases` maps it to; `denoise` is the official `noise_removal`).
  """
  def register(factory):
    factory.config_aliases = {**_ALIASES, **(aliases or {})}
    return SAMPLERS.register(name, factory)
  return register


def sampler_names():
  return SAMPLERS.names()


def _factory(name):
  return SAMPLERS.get(name)


def get_sampler(name, sde, shape, **options):
  """The sampler `name` for `sde` and batch `shape` (any rank): sampler(rng, score_fn, z=None) -> (x, nfe).

  eps defaults to the SDE's own (1e-5 VE, 1e-3 otherwise); other options default as the factory says.
  """
  options.setdefault('eps', None)
  return _factory(name)(sde, shape, **options)


def _config_value(sampling_config, field):
  """config.sampling.<field>, or the one table default when the config predates the field."""
  if field in sampling_config:
    return sampling_config[field]
  return config_table.FIELDS[f'sampling.{field}'].default


def config_options(factory, sampling_config):
  """The factory's keyword options as `config.sampling` sets them."""
  options = {}
  for option in inspect.signature(factory).parameters:
    field = factory.config_aliases.get(option, option)
    if option not in _NOT_OPTIONS and f'sampling.{field}' in config_table.FIELDS:
      options[option] = _config_value(sampling_config, field)
  return options


def get_sampling_fn(config, sde, shape, inverse_scaler=None, eps=None, sharding=None):
  """The sampler named by `config.sampling.method`, with its options from `config.sampling`.

  eps: this argument, else `config.sampling.eps` when > 0, else the SDE's own default.
  """
  factory = _factory(config.sampling.method)
  if eps is None:
    eps = _config_value(config.sampling, 'eps')
  return factory(sde, shape, inverse_scaler=inverse_scaler, eps=eps, sharding=sharding,
                 **config_options(factory, config.sampling))
