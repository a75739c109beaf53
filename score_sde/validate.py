"""Checks a config before anything is built or compiled; every problem is one readable line."""
import os

import jax

from score_sde import datasets, losses, models, sampling, sde_lib


class ConfigError(ValueError):
  """A config that cannot run, with what to change."""


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def validate(config, mode='train'):
  """Raises ConfigError naming the first problem found in `config`."""
  for section in ('training', 'sampling', 'eval', 'data', 'model', 'optim'):
    _require(section in config, f'config has no `{section}` section; start from a configs/default_*.py file.')
  tc = config.training
  try:
    sde = sde_lib.get_sde(config)
    model_class = models.utils.get_model_class(config.model.name)
    sampling.get_predictor(config.sampling.predictor.lower())
    sampling.get_corrector(config.sampling.corrector.lower())
    _require(config.sampling.method.lower() in sampling.SAMPLERS,
             f'Unknown sampling method {config.sampling.method!r}; known: {list(sampling.SAMPLERS)}.')
    sampling.check_predictor(sde, config.sampling.predictor.lower(), config.sampling.probability_flow)
    losses.get_loss_fn(sde, None, True, tc.reduce_mean, tc.continuous, tc.likelihood_weighting)
    datasets.canonical_name(config)
  except (ValueError, NotImplementedError) as error:
    raise ConfigError(str(error)) from None

  devices = jax.device_count()
  _require(tc.batch_size % devices == 0,
           f'training.batch_size={tc.batch_size} does not divide across {devices} devices; '
           f'use a multiple of {devices}.')
  _require(config.eval.batch_size % devices == 0,
           f'eval.batch_size={config.eval.batch_size} does not divide across {devices} devices; '
           f'use a multiple of {devices}.')
  k = tc.n_jitted_steps
  _require(k >= 1, 'training.n_jitted_steps must be at least 1.')
  for field in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    _require(getattr(tc, field) % k == 0,
             f'training.{field}={getattr(tc, field)} is not a multiple of training.n_jitted_steps={k}; '
             'make it one, or lower n_jitted_steps.')
  _require(tc.n_iters % k == 0, f'training.n_iters={tc.n_iters} is not a multiple of training.n_jitted_steps={k}.')
  check = getattr(model_class, 'check_config', None)
  if check is not None:
    try:
      check(config)
    except ValueError as error:
      raise ConfigError(str(error)) from None
  if mode == 'eval':
    _check_eval(config)


def _check_eval(config):
  """Eval needs its feature network before any sampling starts."""
  from score_sde import evaluate, toy
  ec = config.eval
  _require(ec.enable_sampling or ec.enable_bpd, 'eval.enable_sampling and eval.enable_bpd are both False; '
           'nothing to evaluate.')
  _require(ec.get('bpd_dataset', 'test') in ('test', 'train'),
           f"eval.bpd_dataset={ec.bpd_dataset!r}; use 'test' (the held-out split) or 'train'.")
  _require(not ec.enable_sampling or ec.num_samples >= 2 * ec.get('num_splits', 1),
           f'eval.num_samples={ec.num_samples} is too few for FID/KID/IS over eval.num_splits='
           f"{ec.get('num_splits', 1)} parts; use at least twice as many.")
  if not ec.enable_sampling or config.data.dataset in toy.TOY_DISTRIBUTIONS:
    return
  try:
    name = evaluate.feature_extractor_name(config, is_image=True)
  except evaluate.EvalError as error:
    raise ConfigError(str(error)) from None
  _require(name != 'digits_classifier' or config.data.num_channels == 1,
           'eval.feature_extractor=digits_classifier reads 1-channel digit images; use inception for '
           f'{config.data.num_channels}-channel data.')
  if name == 'inception':
    from score_sde import inception
    path = ec.get('inception_weights', '')
    _require(bool(path) and os.path.exists(path),
             f'eval.inception_weights={path!r} is not a file. FID needs the pytorch-fid Inception weights: download '
             f'{inception.WEIGHTS_URL} and convert them (needs torch) with `{inception.CONVERT_COMMAND}`, then pass '
             '--config.eval.inception_weights=<the .npz>.')
