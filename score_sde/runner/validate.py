"""Checks a config before anything is built, compiled or written; every problem is one readable line.

Each field is checked against its domain in `config_table`; this module adds the checks that tie fields together.
"""
import jax

from score_sde import config_table, datasets, losses, models, sampling, sde_lib
from score_sde.config_table import ConfigError, require
from score_sde.metrics import features
from score_sde.runner import checkpoints


def validate(config, mode='train', workdir=None):
  """Raises ConfigError naming the first problem found in `config` for `mode`."""
  config_table.check(config)
  tc = config.training
  try:
    datasets.canonical_name(config)
    sde = sde_lib.get_sde(config)
    model_class = models.utils.get_model_class(config.model.name)
    sampling.get_sampling_fn(config, sde, (jax.device_count(),) + datasets.spec(config).shape)  # checks options
    losses.check_loss_config(config)
    losses.get_loss_fn(sde, None, True, **losses.loss_options(config))
    spec = datasets.spec(config)
    takes_images = getattr(model_class, 'takes_images', True)
    if takes_images != spec.is_image:
      raise ValueError(f'model.name={config.model.name!r} takes {"images" if takes_images else "vector data"}, not '
                      f'the {"images" if spec.is_image else "points"} of data.dataset={config.data.dataset!r}; '
                      f'use {"mlp" if spec.is_image is False else "an image model such as ncsnpp"}.')
    check = getattr(model_class, 'check_config', None)
    if check is not None:
      check(config)
  except (ValueError, NotImplementedError) as error:
    raise ConfigError(str(error)) from None

  devices = jax.device_count()
  for field, value in (('training.batch_size', tc.batch_size), ('eval.batch_size', config.eval.batch_size)):
    require(value % devices == 0, f'{field}={value} does not divide across {devices} devices; use a multiple '
            f'of {devices}.')
  if mode != 'train':
    require(workdir is None or checkpoints.has_checkpoint(workdir),
            f'no checkpoint in {workdir}; train first (--mode train) or point --workdir at a trained run.')
  if mode == 'eval':
    _check_eval(config)
  if mode == 'sample' and config.sampling.condition != 'none':
    from score_sde.runner import conditional_sampling
    try:
      conditional_sampling.check(config)
    except ValueError as error:
      raise ConfigError(str(error)) from None


def _check_eval(config):
  """Eval needs its feature network before any sampling starts."""
  ec = config.eval
  require(ec.enable_sampling or ec.enable_bpd or ec.enable_loss,
          'eval.enable_sampling, eval.enable_bpd and eval.enable_loss are all False; nothing to evaluate.')
  require(not ec.enable_sampling or ec.num_samples >= 2 * ec.num_splits,
          f'eval.num_samples={ec.num_samples} is too few for FID/KID/IS over eval.num_splits={ec.num_splits} '
          'parts; use at least twice as many.')
  if not ec.enable_sampling or not datasets.spec(config).is_image:
    return
  try:
    features.check_feature_extractor(config)
  except (ValueError, OSError) as error:
    raise ConfigError(str(error).splitlines()[0]) from None
