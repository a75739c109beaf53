"""Datasets as deterministic, resumable streams of batches.

`get_dataset(config)` gives a `Dataset`: `train_batches(start_step)` yields this host's part of every
training batch from global step `start_step` on, and a resumed run sees exactly the batches an
uninterrupted run would. Images are NHWC float32 in [0, 1]; toy data is (batch, D). Where the data have labels,
each batch also holds 'label' (batch,) int32, drawn with the images (the labels ride along: the images are drawn
exactly as without them): tfds's `label` feature, the digit, the image folder's class (its subfolders in sorted
order), the toy mixture's component.

Sources, picked by `config.data.dataset` (the official names work too):
  digits, toy mixtures                    built in, offline, held in memory
  cifar10, svhn_cropped, mnist, fashion_mnist   tensorflow-datasets, held in memory
  celeb_a, lsun/<category>                tensorflow-datasets, streamed (official crops)
  ffhq, celebahq                          the official TFRecords (config.data.tfrecords_path), streamed
  image_folder                            <config.data.image_folder>/train/<label>/*.png, streamed
Random flips and uniform dequantization are drawn on the host from (seed, step).
"""
import dataclasses
import functools
import glob
import itertools
import logging
import os
from typing import Callable

import jax
import numpy as np

from score_sde import config_table, parallel, toy
from score_sde.registry import Registry


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
  train_batches: Callable            # start_step -> iterator over this host's rows of each global batch
  eval_batches: Callable             # () -> iterator over whole held-out batches, in a fixed order
  is_image: bool = True
  num_levels: int = 256              # grey levels of the stored images (bpd counts bits of these)
  reference_batches: Callable = None  # () -> the training split in a fixed order, unaugmented (FID statistics);
                                      # the held-out split where there is no fixed training set (toy data)
  num_classes: int = 0               # batches hold 'label' in [0, num_classes) when > 0
  class_names: tuple = ()            # the name of each class, where the data name them (image folders)

  def __post_init__(self):
    if self.reference_batches is None:
      self.reference_batches = self.eval_batches


def uniform_dequantize(images, rng, levels):
  """Spreads each of `levels` values in [0, 1] uniformly over its bin: (x (levels-1) + u) / levels."""
  return (images * (levels - 1) + rng.random(images.shape, dtype=np.float32)) / levels


def augment(images, rng, random_flip, dequantize_levels=None):
  """Left-right flips with probability ½, then uniform dequantization, drawn from `rng`."""
  if random_flip:
    flip = rng.random(len(images)) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if dequantize_levels:
    images = uniform_dequantize(images, rng, dequantize_levels)
  return images


def _epoch_permutation(seed, epoch, n):
  return np.random.default_rng([seed, epoch]).permutation(n)


def _as_float(images, levels):
  return images.astype(np.float32) / (levels - 1) if images.dtype == np.uint8 else images.astype(np.float32)


def _batch(images, labels=None):
  return {'image': images} if labels is None else {'image': images, 'label': labels}


def array_dataset(train, test, batch_size, eval_batch_size, seed, random_flip=False, uniform_dequantization=False,
                  levels=256, train_labels=None, test_labels=None, num_classes=0):
  """Batches from in-memory arrays (uint8, or floats in [0, 1]), with their int labels when given.

  Epochs are reshuffled by (seed, epoch), flips and dequantization drawn by (seed, step); every host
  builds the same global batch and keeps its own rows, so the data do not depend on the host count.
  """
  if train_labels is not None:
    train_labels, test_labels = np.asarray(train_labels, np.int32), np.asarray(test_labels, np.int32)
  n = len(train)
  if batch_size > n:
    raise DatasetError(f'training.batch_size={batch_size} is larger than the training set ({n} examples).')
  if eval_batch_size > len(test):
    raise DatasetError(f'eval.batch_size={eval_batch_size} is larger than the held-out split ({len(test)} '
                       'examples); lower it.')

  def train_batch(step):
    start = step * batch_size
    idx = np.concatenate([_epoch_permutation(seed, e, n) for e in range(start // n, (start + batch_size - 1) // n + 1)])
    offset = start % n
    rows = idx[offset:offset + batch_size]
    images = _as_float(train[rows], levels)
    rng = np.random.default_rng([seed, 1, step])
    images = augment(images, rng, random_flip, levels if uniform_dequantization else None)
    return _batch(images, None if train_labels is None else train_labels[rows])

  def train_batches(start_step):
    host = parallel.host_rows(batch_size)
    return ({k: v[host] for k, v in train_batch(step).items()} for step in itertools.count(start_step))

  def in_order(images, labels, whole_batches):
    """The split in its stored order; the held-out split in whole batches only, the training split to its end."""
    def batches():
      for start in range(0, len(images) - (eval_batch_size - 1 if whole_batches else 0), eval_batch_size):
        rows = slice(start, start + eval_batch_size)
        yield _batch(_as_float(images[rows], levels), None if labels is None else labels[rows])
    return batches

  return Dataset(shape=train.shape[1:], train_batches=train_batches, eval_batches=in_order(test, test_labels, True),
                 num_levels=levels, reference_batches=in_order(train, train_labels, False),
                 num_classes=num_classes if train_labels is not None else 0)


def _toy(config, name):
  mixture = toy.get_toy_distribution(name)
  key = jax.random.PRNGKey(config.seed)
  test, test_labels = map(np.asarray, mixture.sample_with_labels(jax.random.fold_in(key, 1), config.data.num_test))
  batch_size = config.training.batch_size
  sample = jax.jit(lambda step: mixture.sample_with_labels(jax.random.fold_in(jax.random.fold_in(key, 2), step),
                                                           batch_size))

  def train_batches(start_step):
    host = parallel.host_rows(batch_size)
    for step in itertools.count(start_step):
      points, labels = map(np.asarray, sample(step))
      yield _batch(points[host], labels[host])

  eval_size = config.eval.batch_size

  def eval_batches():
    for start in range(0, len(test) - eval_size + 1, eval_size):
      yield _batch(test[start:start + eval_size], test_labels[start:start + eval_size])

  return Dataset(shape=(mixture.dim,), train_batches=train_batches, eval_batches=eval_batches, is_image=False,
                 num_classes=len(mixture.weights))


DIGITS_LEVELS = 17  # scikit-learn's digits hold the grey levels 0..16
DIGITS_CLASSES = 10


def digits_split(num_test=None):
  """(train_images, train_labels, test_images, test_labels) of scikit-learn's 8×8 digits in [0, 1], offline.

  The split is fixed whatever the seed: the first `num_test` (default: the data.num_test default) of
  default_rng(0).permutation(1797) are held out. The digits classifiers are trained on the same split.
  """
  from sklearn.datasets import load_digits
  if num_test is None:
    num_test = config_table.FIELDS['data.num_test'].default
  digits = load_digits()
  images = (digits.images / (DIGITS_LEVELS - 1.)).astype(np.float32)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  test, train = order[:num_test], order[num_test:]
  return images[train], digits.target[train], images[test], digits.target[test]


def _digits(config):
  """scikit-learn's 8×8 handwritten digits (1,797 images, 17 grey levels), offline."""
  train, train_labels, test, test_labels = digits_split(config.data.num_test)
  if config.data.image_size != 8:
    size = config.data.image_size
    resize = lambda x: np.asarray(jax.image.resize(x, (len(x), size, size, 1), 'bilinear'))
    train, test = resize(train), resize(test)
  return array_dataset(train, test, config.training.batch_size, config.eval.batch_size, config.seed,
                       config.data.random_flip, config.data.uniform_dequantization, levels=DIGITS_LEVELS,
                       train_labels=train_labels, test_labels=test_labels, num_classes=DIGITS_CLASSES)


# --- tensorflow-datasets and files on disk --------------------------------------------------------------------

# The official configs' names, and ours.
OFFICIAL_NAMES = {'CIFAR10': 'cifar10', 'SVHN': 'svhn_cropped', 'CELEBA': 'celeb_a', 'MNIST': 'mnist',
                  'FASHION_MNIST': 'fashion_mnist', 'FFHQ': 'ffhq', 'CelebAHQ': 'celebahq'}
IN_MEMORY_TFDS = {'cifar10': 'test', 'svhn_cropped': 'test', 'mnist': 'test', 'fashion_mnist': 'test'}  # → eval split
STREAMED_TFDS = {'celeb_a': 'validation', 'lsun': 'validation'}
TFRECORDS = ('ffhq', 'celebahq')
SHUFFLE_BUFFER = 10000


def _tf():
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')  # the input pipeline stays on the host
  return tf


def _tfds_load(config, name, split, **kwargs):
  import tensorflow_datasets as tfds
  data_dir = config.data.data_dir or None
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # tfds logs its search of data_dir; a missing dataset gets our one line
  try:
    return tfds.load(name, split=split, download=config.data.download, data_dir=data_dir,
                     **kwargs)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError) as error:
    where = data_dir or os.path.join('~', 'tensorflow_datasets')
    raise DatasetError(f'dataset {name!r} is not prepared in {where}: fetch it once with --config.data.download=True '
                       f'(needs network), or point --config.data.data_dir at a directory that has it '
                       f'({type(error).__name__}).') from None
  except ValueError as error:  # e.g. an LSUN category tfds does not know
    raise DatasetError(f'tensorflow-datasets cannot load {name!r}: {str(error).splitlines()[0]}') from None
  finally:
    absl_logger.setLevel(level)


def _resize(tf, image, size):
  """Float image in [0, 1] → size × size, antialiased (the official resize)."""
  return tf.image.resize(image, [size, size], antialias=True)


def _central_crop(tf, image, size):
  top, left = (tf.shape(image)[0] - size) // 2, (tf.shape(image)[1] - size) // 2
  return image[top:top + size, left:left + size]


def _resize_small(tf, image, size):
  """Shorter side → size, keeping the aspect ratio."""
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  ratio = size / tf.minimum(h, w)
  return tf.image.resize(image, [tf.cast(tf.round(h * ratio), tf.int32), tf.cast(tf.round(w * ratio), tf.int32)],
                         antialias=True)


def _crop_resize(tf, image_uint8, size):
  """Central square crop, then (unless already size × size) a bicubic antialiased resize back to uint8, as the
  official LSUN pipeline does; returns [0, 1] floats."""
  crop = tf.minimum(tf.shape(image_uint8)[0], tf.shape(image_uint8)[1])
  image = _central_crop(tf, image_uint8, crop)
  image = tf.cond(crop == size, lambda: image, lambda: tf.cast(tf.clip_by_value(
      tf.image.resize(image, [size, size], antialias=True, method='bicubic'), 0, 255), tf.uint8))
  return tf.cast(tf.reshape(image, [size, size, -1]), tf.float32) / 255.


def _preprocess(name, size):
  """uint8 HWC image → float32 size × size × C in [0, 1], with each dataset's official crop."""
  tf = _tf()

  def to_float(image):
    return tf.image.convert_image_dtype(image, tf.float32)

  if name == 'celeb_a':
    return lambda image: _resize_small(tf, _central_crop(tf, to_float(image), 140), size)
  if name == 'lsun' and size == 128:
    return lambda image: _central_crop(tf, _resize_small(tf, to_float(image), size), size)
  if name in ('lsun', 'image_folder'):
    return lambda image: _crop_resize(tf, image, size)
  return lambda image: _resize(tf, to_float(image), size)  # TFRecords: the identity, to 1e-7, at their own size


def _tfds_in_memory(config, name):
  """A small tfds image set, decoded once into host memory (uint8 at its stored size), with its labels."""
  import tensorflow_datasets as tfds
  splits = [list(tfds.as_numpy(_tfds_load(config, name, split).batch(10000)))
            for split in ('train', IN_MEMORY_TFDS[name])]
  arrays = [np.concatenate([b['image'] for b in batches]) for batches in splits]
  train_labels, test_labels = [np.concatenate([b['label'] for b in batches]) if 'label' in batches[0] else None
                               for batches in splits]
  channels, size = config.data.num_channels, config.data.image_size
  if arrays[0].shape[-1] != channels:
    raise DatasetError(f'{name} has {arrays[0].shape[-1]} channel(s); set --config.data.num_channels='
                       f'{arrays[0].shape[-1]}.')
  if arrays[0].shape[1:3] != (size, size):  # the official float resize, a chunk of images at a time
    tf = _tf()
    arrays = [np.concatenate([_resize(tf, tf.image.convert_image_dtype(a[i:i + 5000], tf.float32), size).numpy()
                              for i in range(0, len(a), 5000)]) for a in arrays]
  train, test = arrays
  return array_dataset(train, test, config.training.batch_size, config.eval.batch_size, config.seed,
                       config.data.random_flip, config.data.uniform_dequantization, levels=256,
                       train_labels=train_labels, test_labels=test_labels,
                       num_classes=DATASETS.info(name)['num_classes'])


def _stream(config, name, records, decode, class_names=()):
  """A streamed image set. records(split, for_training) → tf.data of encoded examples (this host's
  share when for_training), or of (example, label) pairs when the data have `class_names`; decode(record) →
  uint8 HWC. Training order: each epoch shuffled with the run's seed; a resume skips to its step before
  decoding, so it reads the batches an uninterrupted run would."""
  tf = _tf()
  size, seed = config.data.image_size, config.seed
  preprocess = _preprocess(name, size)
  local_batch = config.training.batch_size // jax.process_count()
  train_split, eval_split = _splits(config, name)
  dequantize = 256 if config.data.uniform_dequantization else None

  labelled = bool(class_names)

  def prepared(ds, batch_size):
    prepare = (lambda r, y: (preprocess(decode(r)), y)) if labelled else (lambda r: preprocess(decode(r)))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def images_and_labels(element):
    return element if labelled else (element, None)

  def train_batches(start_step):
    source, skip = records(train_split, True), start_step * local_batch
    per_epoch = int(source.cardinality())  # known for tfds splits and image folders, not for TFRecords
    if per_epoch > 0:  # epoch e is shuffled with seed (seed, e): a resume reads only the rest of its epoch
      first_epoch, skip = divmod(skip, per_epoch)
      ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(
          lambda epoch: source.shuffle(SHUFFLE_BUFFER, seed=seed * 1_000_003 + epoch))
    else:
      ds = source.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = prepared(ds.skip(skip), local_batch)
    for step, element in enumerate(ds.as_numpy_iterator(), start_step):
      images, labels = images_and_labels(element)
      rng = np.random.default_rng([seed, 1, step, jax.process_index()])
      yield _batch(augment(images, rng, config.data.random_flip, dequantize), labels)

  def in_order(split):
    return lambda: (_batch(*images_and_labels(element)) for element in
                    prepared(records(split, False), config.eval.batch_size).as_numpy_iterator())

  try:  # fail now, not at the first training step, when nothing can be read
    next(prepared(records(train_split, False), 1).as_numpy_iterator())
  except (tf.errors.OpError, StopIteration) as error:
    raise DatasetError(f'cannot read {name}: {str(error).splitlines()[0] if str(error) else "no examples"}') from None
  return Dataset(shape=(size, size, config.data.num_channels), train_batches=train_batches,
                 eval_batches=in_order(eval_split), reference_batches=in_order(train_split),
                 num_classes=len(class_names), class_names=tuple(class_names))


def _splits(config, name):
  if name in STREAMED_TFDS:
    return 'train', STREAMED_TFDS[name]
  if name == 'image_folder':
    root = config.data.image_folder
    held_out = [s for s in ('test', 'validation') if os.path.isdir(os.path.join(root, s))]
    return 'train', (held_out[0] if held_out else 'train')
  return 'train', 'train'  # the official TFRecords have one split


def _tfds_streamed(config, name):
  import tensorflow_datasets as tfds
  tf = _tf()
  full_name = name
  if name == 'lsun':
    full_name = config.data.dataset if '/' in config.data.dataset else f'lsun/{config.data.category}'

  def records(split, for_training):
    split = tfds.split_for_jax_process(split) if for_training else split
    ds = _tfds_load(config, full_name, split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
    return ds.map(lambda example: example['image'])

  records('train', False)  # a missing dataset fails here, in well under a second
  return _stream(config, name, records,
                 lambda data: tf.io.decode_image(data, channels=config.data.num_channels, expand_animations=False))


def _tfrecords(config, name):
  """The official FFHQ / CelebA-HQ TFRecords: {'shape': [C, H, W] int64, 'data': raw uint8 bytes}."""
  tf = _tf()
  path = config.data.tfrecords_path
  files = sorted(tf.io.gfile.glob(path)) if path else []
  if not files:
    raise DatasetError(f'no TFRecords at data.tfrecords_path={path!r}; set --config.data.tfrecords_path to the '
                       f'{name} .tfrecords file (or a glob) made with the official dataset_tool.')

  def records(split, for_training):
    ds = tf.data.TFRecordDataset(files)
    return ds.shard(jax.process_count(), jax.process_index()) if for_training else ds

  def decode(record):
    example = tf.io.parse_single_example(record, {'shape': tf.io.FixedLenFeature([3], tf.int64),
                                                  'data': tf.io.FixedLenFeature([], tf.string)})
    return tf.transpose(tf.reshape(tf.io.decode_raw(example['data'], tf.uint8), example['shape']), (1, 2, 0))
  return _stream(config, name, records, decode)


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


def image_folder_classes(root):
  """The class names of an image folder: the subfolders of <root>/train, sorted; class k is the k-th name."""
  train = os.path.join(root, 'train')
  if not root or not os.path.isdir(train):
    return []
  return sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))


def _image_folder(config):
  """Your own images: <data.image_folder>/train/<label>/*.png (and test/ or validation/ for held-out data),
  labelled by their subfolder (image_folder_classes)."""
  tf = _tf()
  root = config.data.image_folder

  def files(split):
    return sorted(f for f in glob.glob(os.path.join(root, split, '*', '*')) if f.lower().endswith(IMAGE_EXTENSIONS))
  if not root or not files('train'):
    raise DatasetError(f'no images in data.image_folder={root!r}: expected <folder>/train/<label>/*.png; set '
                       '--config.data.image_folder to such a folder.')
  class_names = image_folder_classes(root)
  index = {name: k for k, name in enumerate(class_names)}
  unknown = sorted({os.path.basename(os.path.dirname(f)) for s in _splits(config, 'image_folder') for f in files(s)}
                   - set(index))
  if unknown:
    raise DatasetError(f'data.image_folder={root!r}: the held-out classes {unknown} are not among the training '
                       f'classes {class_names}; give every class a folder under train/.')

  def records(split, for_training):
    paths = files(split)
    labels = np.asarray([index[os.path.basename(os.path.dirname(f))] for f in paths], np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.shard(jax.process_count(), jax.process_index()) if for_training else ds

  return _stream(config, 'image_folder', records,
                 lambda path: tf.io.decode_image(tf.io.read_file(path), channels=config.data.num_channels,
                                                 expand_animations=False), class_names=class_names)


# name -> load(config) -> Dataset. Facts given at registration, read by spec() without loading anything:
# points=True for vector data (its dimension is the toy distribution's), num_levels of stored images (default 256),
# num_classes of labelled data (default 0; an image folder's are its subfolders).
DATASETS = Registry('data.dataset', case_sensitive=True)
DATASETS.register('digits', _digits, num_levels=DIGITS_LEVELS, num_classes=DIGITS_CLASSES)
DATASETS.register('image_folder', _image_folder)
for _name, _mixture in toy.TOY_DISTRIBUTIONS.items():
  DATASETS.register(_name, functools.partial(_toy, name=_name), points=True, num_classes=len(_mixture.weights))
for _name in IN_MEMORY_TFDS:
  DATASETS.register(_name, functools.partial(_tfds_in_memory, name=_name), num_classes=10)  # each has 10 labels
for _name in STREAMED_TFDS:
  DATASETS.register(_name, functools.partial(_tfds_streamed, name=_name))
for _name in TFRECORDS:
  DATASETS.register(_name, functools.partial(_tfrecords, name=_name))


def dataset_names():
  return [name if name != 'lsun' else 'lsun/<category>' for name in DATASETS.names()]


def canonical_name(config):
  """Our registry name for config.data.dataset ('CIFAR10' → 'cifar10', 'lsun/church_outdoor' → 'lsun')."""
  name = config.data.dataset
  name = OFFICIAL_NAMES.get(name, name)
  if name == 'LSUN':
    name = 'lsun'
  elif name.startswith('lsun/'):
    config_category = name.split('/', 1)[1]
    if config.data.category and config.data.category != config_category:
      raise DatasetError(f'data.dataset={config.data.dataset!r} but data.category={config.data.category!r}.')
    name = 'lsun'
  if name not in DATASETS:
    raise DatasetError(f'Unknown dataset {config.data.dataset!r}; known: {dataset_names()} '
                       f'(official names {sorted(OFFICIAL_NAMES) + ["LSUN"]} work too).')
  if name == 'lsun' and not config.data.category and '/' not in config.data.dataset:
    raise DatasetError('LSUN needs a category: set --config.data.category (e.g. church_outdoor, bedroom).')
  return name


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the rest of the code needs to know about a dataset, without loading it."""
  shape: tuple          # one example's shape: (H, W, C) for images, (D,) for points
  is_image: bool
  num_levels: int       # grey levels of the stored images (0 for continuous points)
  num_classes: int = 0  # labels of the data: batches hold 'label' in [0, num_classes); 0 without labels


def spec(config):
  name = canonical_name(config)
  info = DATASETS.info(name)
  num_classes = (len(image_folder_classes(config.data.image_folder)) if name == 'image_folder'
                 else info.get('num_classes', 0))
  if info.get('points'):
    return Spec(shape=(toy.get_toy_distribution(name).dim,), is_image=False, num_levels=0, num_classes=num_classes)
  size = config.data.image_size
  return Spec(shape=(size, size, config.data.num_channels), is_image=True, num_levels=info.get('num_levels', 256),
              num_classes=num_classes)


def get_dataset(config):
  return DATASETS.get(canonical_name(config))(config)
