"""Datasets as deterministic, resumable streams of batches.

A dataset is `Dataset(shape, train_batch(step), eval_batches())`: the training batch of
global step `step` depends only on (seed, step), so a resumed run sees exactly the data
an uninterrupted run would. Images are NHWC float32 in [0, 1]; toy data is (batch, D).
"""
import dataclasses
from typing import Callable

import jax
import numpy as np

from score_sde import toy


class DatasetError(ValueError):
  """A dataset that is unknown or not available offline."""


def get_data_scaler(config):
  """[0, 1] → [-1, 1] when data.centered, else identity."""
  return (lambda x: x * 2. - 1.) if config.data.centered else (lambda x: x)


def get_data_inverse_scaler(config):
  return (lambda x: (x + 1.) / 2.) if config.data.centered else (lambda x: x)


@dataclasses.dataclass
class Dataset:
  shape: tuple                       # one example's shape
  train_batch: Callable              # step -> {'image': (batch, *shape)}
  eval_batches: Callable             # () -> iterator over held-out batches
  num_eval: int
  is_image: bool = True
  num_levels: int = 256              # grey levels of the stored images (bpd counts bits of these)


def uniform_dequantize(images, rng, levels):
  """Spreads each of `levels` values in [0, 1] uniformly over its bin: (x (levels-1) + u) / levels."""
  return (images * (levels - 1) + rng.random(images.shape, dtype=np.float32)) / levels


def _epoch_permutation(seed, epoch, n):
  return np.random.default_rng([seed, epoch]).permutation(n)


def array_dataset(train, test, batch_size, eval_batch_size, seed, random_flip=False, uniform_dequantization=False,
                  levels=256):
  """Batches from in-memory arrays: epochs reshuffled by (seed, epoch), flips and dequantization by (seed, step)."""
  train, test = np.asarray(train, np.float32), np.asarray(test, np.float32)
  n = len(train)
  if batch_size > n:
    raise DatasetError(f'training.batch_size={batch_size} is larger than the training set ({n} examples).')

  def train_batch(step):
    start = step * batch_size
    idx = np.concatenate([_epoch_permutation(seed, e, n) for e in range(start // n, (start + batch_size - 1) // n + 1)])
    offset = start % n
    images = train[idx[offset:offset + batch_size]]
    rng = np.random.default_rng([seed, 1, step])
    if random_flip:
      flip = rng.random(batch_size) < 0.5
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if uniform_dequantization:
      images = uniform_dequantize(images, rng, levels)
    return {'image': images}

  def eval_batches():
    for start in range(0, len(test) - eval_batch_size + 1, eval_batch_size):
      yield {'image': test[start:start + eval_batch_size]}

  return Dataset(shape=train.shape[1:], train_batch=train_batch, eval_batches=eval_batches,
                 num_eval=len(test) // eval_batch_size * eval_batch_size, num_levels=levels)


def _toy(config, name):
  mixture = toy.get_toy_distribution(name)
  key = jax.random.PRNGKey(config.seed)
  test = np.asarray(mixture.sample(jax.random.fold_in(key, 1), config.data.num_test))
  batch_size = config.training.batch_size
  sample = jax.jit(lambda step: mixture.sample(jax.random.fold_in(jax.random.fold_in(key, 2), step), batch_size))

  def train_batch(step):
    return {'image': np.asarray(sample(step))}

  eval_size = config.eval.batch_size

  def eval_batches():
    for start in range(0, len(test) - eval_size + 1, eval_size):
      yield {'image': test[start:start + eval_size]}

  return Dataset(shape=(mixture.dim,), train_batch=train_batch, eval_batches=eval_batches,
                 num_eval=len(test) // eval_size * eval_size, is_image=False)


def _digits(config):
  """scikit-learn's 8×8 handwritten digits (1,797 images, 17 grey levels), offline."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = (digits.images / 16.).astype(np.float32)[..., None]
  order = np.random.default_rng(0).permutation(len(images))  # a fixed split, whatever the seed
  n_test = config.data.get('num_test', 297)
  test, train = images[order[:n_test]], images[order[n_test:]]
  if config.data.image_size != 8:
    size = config.data.image_size
    resize = lambda x: np.asarray(jax.image.resize(x, (len(x), size, size, 1), 'bilinear'))
    train, test = resize(train), resize(test)
  return array_dataset(train, test, config.training.batch_size, config.eval.batch_size, config.seed,
                       config.data.random_flip, config.data.uniform_dequantization, levels=17)


_DATASETS = {
    'digits': _digits,
    **{name: (lambda config, name=name: _toy(config, name)) for name in toy.TOY_DISTRIBUTIONS},
}


def dataset_names():
  return sorted(_DATASETS)


def is_tfds_name(name):
  """Names that the tfds pipelines (cifar10, lsun/church, ...) will serve; none yet."""
  return False


def get_dataset(config):
  name = config.data.dataset
  if name not in _DATASETS:
    raise DatasetError(f'Unknown dataset {name!r}; known: {dataset_names()}.')
  return _DATASETS[name](config)
