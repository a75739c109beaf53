"""Checks a config before anything is built, compiled or written; every problem is one readable line.

Each field is checked against its domain in `config_table`; this module adds the checks that tie fields together.
"""
import jax

from score_sde import config_table, datasets, losses, models, sampling, sde_lib
from score_sde.config_table import ConfigError, require
from score_sde.metrics import features
from score_sde.runner import bpd_estimators, checkpoints


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
    _check_classes(config, spec, model_class)
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
  if mode == 'likelihood' or (mode == 'eval' and config.eval.enable_bpd):
    try:
      bpd_estimators.check_config(config)
    except ValueError as error:
      raise ConfigError(str(error)) from None
  if mode == 'sample' and config.sampling.condition != 'none':
    from score_sde.runner import conditional_sampling
    try:
      conditional_sampling.check(config)
    except ValueError as error:
      raise ConfigError(str(error)) from None
  if mode == 'eval' and config.eval.enable_sampling and config.model.num_classes:
    from score_sde.runner import conditional_sampling
    try:  # eval samples a class-conditional model class-balanced, guided by the cfg fields
      conditional_sampling.check_guidance(config)
    except ValueError as error:
      raise ConfigError(str(error)) from None


def resolve_num_classes(config):
  """model.num_classes=-1 becomes the number of classes of the data (left as it is for data without labels, which
  validate() then reports), so that the network, its checkpoints and the saved config have the number itself."""
  if config.model.num_classes != -1:
    return
  try:
    num_classes = datasets.spec(config).num_classes
  except datasets.DatasetError:
    return  # an unknown dataset: validate() says so
  if num_classes:
    config.model.num_classes = num_classes


def _check_classes(config, spec, model_class):
  """model.num_classes against the data's labels and the network; label dropout needs a conditional model."""
  m, data = config.model, config.data.dataset
  if m.num_classes == 0:
    require(config.training.label_dropout == 0,
            f'training.label_dropout={config.training.label_dropout} drops the labels of a class-conditional model, '
            'but model.num_classes=0; set model.num_classes (-1: the classes of the data) or training.label_dropout=0.')
    return
  if not getattr(model_class, 'takes_class_labels', False):
    takers = [name for name, cls in models.utils.MODELS.items() if getattr(cls, 'takes_class_labels', False)]
    raise ConfigError(f'model.name={m.name!r} takes no class labels; set model.num_classes=0 or use one of {takers}.')
  require(spec.num_classes > 0, f'model.num_classes={m.num_classes} asks for a class-conditional model, but '
          f'data.dataset={data!r} has no labels; set model.num_classes=0.')
  require(m.num_classes == -1 or m.num_classes >= spec.num_classes,
          f'model.num_classes={m.num_classes} is fewer than the {spec.num_classes} classes of data.dataset={data!r}; '
          f'set it to {spec.num_classes} (or -1, the classes of the data).')


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
