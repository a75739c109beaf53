"""`run.py --mode sample` with `sampling.condition` set: inpainting, colorization or class-conditional samples.

  check(config)               ValueError (one line) for settings that cannot work, before anything runs.
  run(config, workdir, state, after_round=None) -> metrics (dict); writes
      <workdir>/samples/<condition>_step_<step>.{png,npz,json}. after_round(r, num_rounds) is called after each
      sampling round r = 1, 2, ...; it may raise to stop the run there (pre-emption), before anything is written.

Inpainting and colorization complete `sampling.num_inputs` held-out images `sampling.num_completions` times each
(PC sampler with sampling.predictor/corrector/snr/n_steps_each). Each grid row shows the original, the mask
(white = known), the input the sampler sees, then the completions. Class-conditional sampling guides the
sampler of `sampling.method` with the noise-conditional classifier `sampling.classifier`; each row is one label.
'cfg' samples a class-conditional model (model.num_classes > 0) with classifier-free guidance
(`BalancedGuidance`: eval.num_samples split evenly over sampling.labels, sampling.guidance_scale and
guidance_interval); --mode eval samples such a model the same way.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import (atomic_files, config_table, controllable, datasets, models, parallel, sampling, sde_lib,
                       toy)
from score_sde.registry import Registry
from score_sde.runner import images, outputs

# name -> task(config, sde, score_fn, rng, after_round) -> (rows, arrays, metrics); a one-round task never calls
# after_round (nothing is left to stop once its only round is done).
CONDITIONS = Registry('sampling.condition')
CONDITIONS.register('none', None)  # plain samples: modes.run_sample


# ---------------------------------------------------------------- masks and labels

def make_mask(kind, fraction, shape, seed=0):
  """(n, H, W, C) float32, 1 where the pixel is known.

  'half': the right half is unknown; 'box': a centred square of about `fraction` of the area;
  'random': each pixel (all its channels) unknown with probability `fraction`; a path: an .npy array
  of shape (H, W), (H, W, C) or (n, H, W, C).
  """
  n, h, w, c = shape
  if kind == 'half':
    mask = np.ones((h, w, 1), np.float32)
    mask[:, w // 2:] = 0.
  elif kind == 'box':
    side_h, side_w = round(h * np.sqrt(fraction)), round(w * np.sqrt(fraction))
    mask = np.ones((h, w, 1), np.float32)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask[top:top + side_h, left:left + side_w] = 0.
  elif kind == 'random':
    mask = (np.random.default_rng(seed).random((n, h, w, 1)) >= fraction).astype(np.float32)
  else:
    mask = _mask_file(kind, shape)
  mask = mask if mask.ndim == 4 else mask[None]
  return np.broadcast_to(mask, shape).astype(np.float32)


def _mask_file(path, shape):
  if not os.path.exists(path):
    raise ValueError(f"sampling.mask={path!r} is neither 'half', 'box', 'random' nor an existing .npy file.")
  mask = np.load(path).astype(np.float32)
  n, h, w, c = shape
  fits = {(h, w): lambda m: m[..., None], (h, w, 1): lambda m: m, (h, w, c): lambda m: m,
          (n, h, w, 1): lambda m: m, (n, h, w, c): lambda m: m}
  if mask.shape not in fits:
    raise ValueError(f'sampling.mask: {path} has shape {mask.shape}; for {n} images of {h}x{w}x{c} it must be '
                     f'({h}, {w}), ({h}, {w}, {c}) or ({n}, {h}, {w}, {c}).')
  if not np.all((mask == 0) | (mask == 1)):
    raise ValueError(f'sampling.mask: {path} must hold only 0 (unknown) and 1 (known).')
  return fits[mask.shape](mask)


def parse_labels(labels, num_classes, whose="the classifier's"):
  """'' → every class; '0,1,2', (0, 1, 2) or 3 → those ids, each checked against num_classes."""
  if isinstance(labels, str):
    parts = [p.strip() for p in labels.replace('(', '').replace(')', '').split(',') if p.strip()]
    if not all(p.lstrip('-').isdigit() for p in parts):
      raise ValueError(f"sampling.labels={labels!r} must be class ids separated by commas, e.g. '0,1,2'.")
    ids = [int(p) for p in parts]
  else:
    ids = [int(v) for v in np.atleast_1d(labels)]
  ids = ids or list(range(num_classes))
  bad = [i for i in ids if not 0 <= i < num_classes]
  if bad:
    raise ValueError(f'sampling.labels has {bad}, outside {whose} classes 0..{num_classes - 1}.')
  return ids


# ---------------------------------------------------------------- classifiers

def get_classifier(config, sde):
  """(log_prob_fn(x, t), num_classes, image_shape) of `sampling.classifier` for states of `sde`."""
  name = config.sampling.classifier
  if name == 'noisy_digits' or name.endswith('.npz'):
    from score_sde.models import noisy_digits_classifier
    variables = noisy_digits_classifier.load(None if name == 'noisy_digits' else name)
    return noisy_digits_classifier.get_log_prob_fn(variables, sde, config.data.centered), noisy_digits_classifier.NUM_CLASSES, noisy_digits_classifier.IMAGE_SHAPE
  from score_sde.models import wideresnet_noise_conditional as wrn
  if not os.path.exists(name):
    raise ValueError(f"sampling.classifier={name!r} is neither 'noisy_digits', an .npz of its weights, nor an "
                     'existing official WideResnet checkpoint.')
  variables = wrn.from_official_flax(name)
  return wrn.get_log_prob_fn(variables, sde, config.data.centered), 10, (32, 32, 3)


def _classifier_shape(name):
  """The image shape a classifier takes, without loading it."""
  if name == 'noisy_digits' or name.endswith('.npz'):
    from score_sde.models import noisy_digits_classifier
    return noisy_digits_classifier.IMAGE_SHAPE, noisy_digits_classifier.NUM_CLASSES
  return (32, 32, 3), 10


# ---------------------------------------------------------------- checks

def check(config):
  """Raises ValueError with one line when the conditioning settings cannot run."""
  s = config.sampling
  if s.condition == 'none':
    return
  if s.condition != 'class' and s.classifier:
    raise ValueError(f'sampling.classifier is set but sampling.condition={s.condition!r}; guidance needs '
                     "sampling.condition='class'.")
  if s.condition == 'cfg':
    if not config.model.num_classes:
      raise ValueError("sampling.condition='cfg' needs a class-conditional model, but model.num_classes=0; train "
                       'one with model.num_classes=-1 and training.label_dropout=0.1 (configs/quickstart_cond.py), '
                       "or guide with a classifier: sampling.condition='class'.")
    check_guidance(config)
    return
  spec = datasets.spec(config)
  if not spec.is_image:
    raise ValueError(f'sampling.condition={s.condition!r} needs image data; {config.data.dataset!r} is not.')
  shape = spec.shape
  if s.condition == 'inpaint':
    mask = make_mask(s.mask, s.mask_fraction, (s.num_inputs,) + tuple(shape))
    if mask.min() == 1. or mask.max() == 0.:
      raise ValueError(f'sampling.mask={s.mask!r} (mask_fraction={s.mask_fraction}) leaves '
                       f"{'no pixel unknown' if mask.min() == 1. else 'no pixel known'}; change it.")
  elif s.condition == 'colorize':
    if shape[-1] != 3:
      raise ValueError(f'Colorization needs RGB data; data.num_channels={shape[-1]}.')
  elif s.condition == 'class':
    if not s.classifier:
      raise ValueError("Class-conditional sampling needs a classifier: set sampling.classifier ('noisy_digits', "
                       'an .npz of its weights, or an official WideResnet checkpoint).')
    if s.classifier != 'noisy_digits' and not os.path.exists(s.classifier):
      raise ValueError(f'sampling.classifier={s.classifier!r}: no such file.')
    classifier_shape, num_classes = _classifier_shape(s.classifier)
    if tuple(shape) != tuple(classifier_shape):
      raise ValueError(f'sampling.classifier={s.classifier!r} takes {classifier_shape} images; the data are '
                       f'{tuple(shape)}.')
    parse_labels(s.labels, num_classes)


def model_num_classes(config):
  """The classes of a class-conditional model: model.num_classes, or the data's for -1."""
  num_classes = config.model.num_classes
  return datasets.spec(config).num_classes if num_classes == -1 else num_classes


def check_guidance(config):
  """ValueError (one line) unless the cfg fields fit the class-conditional model of `config`."""
  labels = parse_labels(config.sampling.labels, model_num_classes(config), "the model's")
  if config.eval.num_samples < len(labels):
    raise ValueError(f'eval.num_samples={config.eval.num_samples} is fewer than the {len(labels)} labels of '
                     f'sampling.labels; raise it to at least {len(labels)} (the samples are split over the labels).')


# ---------------------------------------------------------------- running

def _first(batches, n):
  found = []
  for batch in batches:
    found.append(np.asarray(batch['image']))
    if sum(map(len, found)) >= n:
      break
  return np.concatenate(found)[:n]


def held_out_images(config, n):
  """The first n held-out images in [0, 1] (fewer if the split is smaller)."""
  return _first(datasets.get_dataset(config).eval_batches(), n)


def training_images(config, n):
  """The first n training images (unaugmented, in the dataset's fixed order), in [0, 1]."""
  return _first(datasets.get_dataset(config).reference_batches(), n)


def _eps(config, sde):
  return config.sampling.eps if config.sampling.eps > 0 else sde.default_sampling_eps


def _pc_options(config, sde, inverse_scaler):
  s = config.sampling
  return dict(predictor=s.predictor.lower(), corrector=s.corrector.lower(), snr=s.snr, n_steps=s.n_steps_each,
              probability_flow=s.probability_flow, denoise=s.noise_removal, eps=_eps(config, sde),
              inverse_scaler=inverse_scaler)


def _repeat(x, k):
  return np.repeat(np.asarray(x), k, axis=0)


@CONDITIONS.register('inpaint')
def inpaint(config, sde, score_fn, rng, after_round):  # pylint: disable=unused-argument
  s = config.sampling
  originals = held_out_images(config, s.num_inputs)
  n, k = len(originals), s.num_completions
  mask = make_mask(s.mask, s.mask_fraction, originals.shape, seed=config.seed)
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  inpainter = controllable.get_pc_inpainter(sde, (n * k,) + originals.shape[1:],
                                            **_pc_options(config, sde, inverse_scaler))
  x, nfe = inpainter(rng, score_fn, scaler(jnp.asarray(_repeat(originals, k))), jnp.asarray(_repeat(mask, k)))
  completions = np.clip(np.asarray(x), 0., 1.).reshape((n, k) + originals.shape[1:])  # as images
  unknown = np.broadcast_to(1. - mask[:, None], completions.shape)
  mse = np.sum(unknown * (completions - originals[:, None]) ** 2) / np.sum(unknown)
  # For scale: a training image in place of each completion (the training split in its fixed shuffled order).
  others = training_images(config, n * k).reshape(completions.shape)
  mse_random = np.sum(unknown * (others - originals[:, None]) ** 2) / np.sum(unknown)
  inputs = originals * mask + 0.3 * (1. - mask)  # the unknown part shown dark gray
  rows = [[o, m, i] + list(c) for o, m, i, c in zip(originals, mask, inputs, completions)]
  arrays = dict(originals=originals, mask=mask, completions=completions)
  metrics = {'mse_filled_region': float(mse), 'mse_random_training_image': float(mse_random), 'nfe': int(nfe)}
  return rows, arrays, metrics


@CONDITIONS.register('colorize')
def colorize(config, sde, score_fn, rng, after_round):  # pylint: disable=unused-argument
  s = config.sampling
  originals = held_out_images(config, s.num_inputs)
  n, k = len(originals), s.num_completions
  gray = np.asarray(controllable.to_gray(jnp.asarray(originals)))
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  colorizer = controllable.get_pc_colorizer(sde, (n * k,) + originals.shape[1:],
                                            **_pc_options(config, sde, inverse_scaler))
  x, nfe = colorizer(rng, score_fn, scaler(jnp.asarray(_repeat(gray, k))))
  completions = np.clip(np.asarray(x), 0., 1.).reshape((n, k) + originals.shape[1:])
  mse = np.mean((completions - originals[:, None]) ** 2)
  mask = np.broadcast_to(np.asarray(controllable.gray_mask(jnp.asarray(gray)))[..., :1], gray.shape)
  rows = [[o, m, g] + list(c) for o, m, g, c in zip(originals, mask, gray, completions)]
  arrays = dict(originals=originals, gray=gray, completions=completions)
  metrics = {'mse_color': float(mse), 'mse_gray_input': float(np.mean((gray - originals) ** 2)), 'nfe': int(nfe)}
  return rows, arrays, metrics


@CONDITIONS.register('class')
def class_conditional(config, sde, score_fn, rng, after_round):  # pylint: disable=unused-argument
  s = config.sampling
  log_prob_fn, num_classes, shape = get_classifier(config, sde)
  labels = parse_labels(s.labels, num_classes)
  k = s.num_completions
  ys = np.repeat(labels, k)
  sampler = sampling.get_sampling_fn(config, sde, (len(ys),) + tuple(shape), datasets.get_data_inverse_scaler(config))
  guided = controllable.classifier_guided_score(score_fn, log_prob_fn, ys, s.guidance_scale)
  x, nfe = sampler(rng, guided)
  samples = np.asarray(x)
  metrics = {'nfe': int(nfe), 'guidance_scale': float(s.guidance_scale)}
  predicted = _digits_predictions(samples) if tuple(shape) == (8, 8, 1) else None
  if predicted is not None:  # an independent judge: the clean digits classifier
    metrics['accuracy_per_class'] = {str(y): float(np.mean(predicted[ys == y] == y)) for y in labels}
    metrics['accuracy'] = float(np.mean(predicted == ys))
  rows = [list(samples[ys == y]) for y in labels]
  return rows, dict(samples=samples, labels=ys), metrics


# ---------------------------------------------------------------- classifier-free guidance (class-conditional models)

GRID_COLUMNS = 16  # samples shown per label in the picture


class BalancedGuidance:
  """Class-balanced guided sampling of a class-conditional score_fn(x, t, labels), in rounds of `batch_size`.

  eval.num_samples labels split evenly over sampling.labels ('' every class; the first ones get one more when it
  does not divide), cycling through them, so that every round and every part of the KID/IS splits holds every
  label; round r samples labels[r B:(r+1) B] (the last round filled up cyclically), with classifier-free guidance
  of scale sampling.guidance_scale on sampling.guidance_interval.
  """

  def __init__(self, config, sde, score_fn, batch_size):
    s = config.sampling
    self.sde, self.score_fn, self.batch_size = sde, score_fn, batch_size
    self.scale, self.interval = s.guidance_scale, config_table.parse_interval(s.guidance_interval)
    self.classes = parse_labels(s.labels, model_num_classes(config), "the model's")
    self.labels = np.resize(np.asarray(self.classes, np.int32), config.eval.num_samples)
    self.num_rounds = -(-len(self.labels) // batch_size)
    self.judge = class_judge(config)

  def round_labels(self, r):
    return np.resize(self.labels, self.num_rounds * self.batch_size)[r * self.batch_size:(r + 1) * self.batch_size]

  def score(self, r):
    """Round r's guided score_fn(x, t): a pytree, so every round reuses the compiled sampler."""
    return controllable.classifier_free_guided_score(self.score_fn, self.round_labels(r), self.scale, self.interval,
                                                     self.sde)

  def settings(self):
    return {'guidance_scale': float(self.scale), 'guidance_interval': list(self.interval or ()),
            'labels': [int(k) for k in self.classes]}

  def class_accuracy(self, samples, labels):
    """Accuracy of an independent judge (class_judge) on the samples, overall (± binomial stderr) and per label;
    {} where the data have no judge."""
    if self.judge is None:
      return {}
    predicted = self.judge(samples)
    if predicted is None:
      return {}
    correct = predicted == labels
    mean = float(np.mean(correct))
    return {'class_accuracy': {'mean': mean, 'stderr': float(np.sqrt(mean * (1. - mean) / len(correct)))},
            'class_accuracy_per_class': {str(k): float(np.mean(correct[labels == k])) for k in self.classes}}


def class_judge(config):
  """predict(samples in data space, [0, 1] for images) -> the class of each sample by a classifier that is not the
  model: the clean digits classifier for the 8×8 digits, the exact posterior of a toy mixture; None otherwise."""
  spec = datasets.spec(config)
  name = datasets.canonical_name(config)
  if not spec.is_image:
    return toy.get_toy_distribution(name).assign
  if name == 'digits' and tuple(spec.shape) == (8, 8, 1):
    return _digits_predictions
  return None


@CONDITIONS.register('cfg')
def classifier_free(config, sde, score_fn, rng, after_round):
  """eval.num_samples samples of a class-conditional model, split evenly over sampling.labels, with classifier-free
  guidance; one grid row (or scatter colour) per label."""
  batch = min(config.eval.batch_size, config.eval.num_samples)
  guidance = BalancedGuidance(config, sde, score_fn, batch)
  spec = datasets.spec(config)
  sampler = sampling.get_sampling_fn(config, sde, (batch,) + tuple(spec.shape),
                                     datasets.get_data_inverse_scaler(config), sharding=parallel.batch_sharding())
  progress = outputs.Progress('cfg', guidance.num_rounds, 'round')
  rounds, nfe = [], 0
  for r in range(guidance.num_rounds):
    x, nfe = sampler(jax.random.fold_in(rng, r), guidance.score(r))
    rounds.append(parallel.to_host(x))
    progress.update()
    after_round(r + 1, guidance.num_rounds)
  progress.close()
  samples, labels = np.concatenate(rounds)[:len(guidance.labels)], guidance.labels
  judged = np.clip(samples, 0., 1.) if spec.is_image else samples
  metrics = {'nfe': int(nfe), **guidance.settings(), 'num_samples': len(samples),
             **guidance.class_accuracy(judged, labels)}
  rows = [list(samples[labels == k][:GRID_COLUMNS]) for k in guidance.classes] if spec.is_image else None
  return rows, dict(samples=samples, labels=labels), metrics


def _digits_predictions(samples):
  from score_sde.metrics import digits_classifier
  try:
    _, logits = digits_classifier.get_feature_fn()(np.clip(samples, 0., 1.))
  except FileNotFoundError:
    return None
  return np.asarray(logits).argmax(1)


def save_grid(rows, path):
  """Rows of images (input, mask, completions ...) on a gray background."""
  images.save_grid(images.rows_grid(rows, background=0.6), path, size=384)


def run(config, workdir, state, after_round=None):
  """Runs `sampling.condition` with the EMA parameters of `state`; returns the metrics (also written as json)."""
  check(config)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  condition = config.sampling.condition
  rng = jax.random.PRNGKey(config.seed + 2)
  rows, arrays, metrics = CONDITIONS.get(condition)(config, sde, score_fn, rng, after_round or (lambda r, n: None))
  metrics['step'] = int(state.step)
  if parallel.is_main_process():
    folder = os.path.join(workdir, 'samples')
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f'{condition}_step_{int(state.step)}')
    if rows is None:  # points: a scatter coloured by label
      images.save_scatter(arrays['samples'], stem + '.png', labels=arrays['labels'])
    else:
      save_grid(rows, stem + '.png')
    atomic_files.savez(stem + '.npz', compressed=True, **arrays)
    atomic_files.write_json(stem + '.json', metrics, indent=1)
    outputs.say(f'{condition}: {json.dumps(metrics)}; wrote {stem}.png, .npz and .json')
  return metrics
