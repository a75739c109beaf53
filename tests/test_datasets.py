"""Data pipelines: image folders, the official TFRecords and crops, tfds (mocked), resumable order, missing data."""
import json
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from score_sde import datasets
from helpers import REPO, finish, run_cli

QUICKSTART = str(REPO / 'configs' / 'quickstart.py')


def small_config(**data):
  from configs.quickstart import get_config
  from score_sde import config_table
  config = config_table.with_defaults(get_config())
  config.training.batch_size = 4
  config.eval.batch_size = 4
  config.data.uniform_dequantization = False
  config.data.update(data)
  return config


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """<root>/{train,test}/<label>/*.png with random 8×8 RGB images; returns (root, {path: pixels})."""
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  pixels = {}
  for split, count in (('train', 10), ('test', 4)):
    for label in ('cat', 'dog'):
      (root / split / label).mkdir(parents=True)
      for i in range(count // 2):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / split / label / f'{i}.png')
        pixels[(split, label, i)] = image
  return root, pixels


def test_image_folder_gives_the_files_pixels_in_a_resumable_order(image_folder):
  root, pixels = image_folder
  dataset = datasets.get_dataset(small_config(dataset='image_folder', image_folder=str(root), num_channels=3,
                                              random_flip=False))
  train = [v.astype(np.float32) / 255 for k, v in pixels.items() if k[0] == 'train']
  stream = dataset.train_batches(0)
  batches = [next(stream)['image'] for _ in range(5)]  # 20 images: two epochs of 10
  assert batches[0].shape == (4, 8, 8, 3) and batches[0].dtype == np.float32
  for image in np.concatenate(batches):  # every row is one of the files, exactly, in [0, 1]
    assert any(np.array_equal(image, p) for p in train)
  first_epoch = {np.concatenate(batches)[i].tobytes() for i in range(10)}
  assert len(first_epoch) >= 8  # shuffled, not one image repeated
  np.testing.assert_array_equal(next(dataset.train_batches(3))['image'], batches[3])  # resume at step 3
  held_out = np.concatenate([b['image'] for b in dataset.eval_batches()])
  assert held_out.shape == (4, 8, 8, 3)  # test/ is the held-out split
  test_images = [v.astype(np.float32) / 255 for k, v in pixels.items() if k[0] == 'test']
  assert all(any(np.array_equal(h, t) for t in test_images) for h in held_out)


def test_image_folder_labels_are_the_sorted_subfolders(image_folder):
  """cat = 0, dog = 1: each row's label is its file's folder, in training batches, on resume and held out."""
  root, pixels = image_folder
  config = small_config(dataset='image_folder', image_folder=str(root), num_channels=3, random_flip=False)
  dataset = datasets.get_dataset(config)
  assert dataset.class_names == ('cat', 'dog') and datasets.spec(config).num_classes == dataset.num_classes == 2
  folder = {(split, v.astype(np.float32).tobytes()): label for (split, label, _), v in
            ((k, v / 255.) for k, v in pixels.items())}
  stream = dataset.train_batches(0)
  batches = [next(stream) for _ in range(5)] + [next(dataset.train_batches(3))] + list(dataset.eval_batches())
  for i, batch in enumerate(batches):
    split = 'test' if i > 5 else 'train'
    assert batch['label'].dtype == np.int32
    assert [('cat', 'dog')[y] for y in batch['label']] == [folder[(split, x.tobytes())] for x in batch['image']]


def test_image_folder_trains_from_the_cli(image_folder, tmp_path):
  root, _ = image_folder
  code, out, err = finish(run_cli(
      tmp_path / 'run', '--mode=train', '--config.data.dataset=image_folder', f'--config.data.image_folder={root}',
      '--config.data.num_channels=3', '--config.training.batch_size=4', '--config.eval.batch_size=4',
      '--config.training.n_iters=4', '--config.training.n_jitted_steps=2', '--config.training.log_freq=2',
      '--config.training.eval_freq=4', '--config.training.snapshot_freq=4',
      '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False',
      '--config.model.nf=8', '--config.model.ch_mult=(1,)', '--config.model.attn_resolutions=()',
      config=QUICKSTART))
  assert code == 0, err[-3000:]
  logged = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  losses = [m['loss'] for m in logged if 'loss' in m]
  assert len(losses) == 2 and all(np.isfinite(losses)), logged
  assert any('eval_loss' in m for m in logged)
  assert json.loads((tmp_path / 'run' / 'class_names.json').read_text()) == {'0': 'cat', '1': 'dog'}
  assert '2 classes 0=cat, 1=dog' in out


def test_an_empty_image_folder_is_one_clear_error(tmp_path):
  with pytest.raises(datasets.DatasetError, match='train/<label>'):
    datasets.get_dataset(small_config(dataset='image_folder', image_folder=str(tmp_path)))


def test_official_tfrecords_are_read_channels_first(tmp_path):
  """The official FFHQ/CelebA-HQ records store {'shape': [C, H, W], 'data': raw uint8 bytes}."""
  import tensorflow as tf
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
  path = tmp_path / 'ffhq-r03.tfrecords'
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image in images:
      feature = {'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=image.shape)),
                 'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  config = small_config(dataset='FFHQ', tfrecords_path=str(path), num_channels=3, random_flip=False)
  read = np.concatenate([b['image'] for b in datasets.get_dataset(config).eval_batches()])
  np.testing.assert_allclose(read, images[:4].transpose(0, 2, 3, 1) / 255., rtol=0, atol=1e-7)


def test_celeba_uses_the_official_140_pixel_central_crop():
  """Official: crop 140×140 at ((218-140)//2, (178-140)//2) = (39, 19) of the 218×178 image, then resize."""
  image = np.random.default_rng(2).integers(0, 256, (218, 178, 3), dtype=np.uint8)
  cropped = datasets._preprocess('celeb_a', 140)(image).numpy()
  np.testing.assert_allclose(cropped, image[39:179, 19:159] / 255., atol=1e-6)
  assert datasets._preprocess('celeb_a', 64)(image).numpy().shape == (64, 64, 3)


def test_lsun_crops_the_central_square():
  """A 40×60 image whose central 40×40 square is white and whose sides are black stays white (but for the
  bicubic kernel's faint ringing at the edges); any other crop would bring in black columns."""
  image = np.zeros((40, 60, 3), np.uint8)
  image[:, 10:50] = 255
  out = datasets._preprocess('lsun', 16)(image).numpy()
  assert out.shape == (16, 16, 3) and out.min() > 0.95


def test_tfds_pipelines_on_mocked_data():
  """tfds's own mock data stand in for cifar10 / celeb_a / lsun, which this machine cannot download."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    cifar = datasets.get_dataset(small_config(dataset='CIFAR10', num_channels=3, image_size=32))
    batch = next(cifar.train_batches(0))
    assert batch['image'].shape == (4, 32, 32, 3) and cifar.num_classes == 10
    assert batch['label'].dtype == np.int32 and batch['label'].shape == (4,) and 0 <= batch['label'].min() < 10
    for name, extra in (('celeb_a', {}), ('LSUN', {'category': 'church_outdoor'}), ('lsun/bedroom', {})):
      config = small_config(dataset=name, num_channels=3, image_size=16)
      if extra:
        config.data = ml_collections.ConfigDict({**config.data.to_dict(), **extra})
      dataset = datasets.get_dataset(config)
      batch = next(dataset.train_batches(0))['image']
      assert batch.shape == (4, 16, 16, 3) and 0. <= batch.min() and batch.max() <= 1.
      assert next(dataset.eval_batches())['image'].shape == (4, 16, 16, 3)
    with pytest.raises(datasets.DatasetError, match='num_channels=1'):
      datasets.get_dataset(small_config(dataset='mnist', num_channels=3, image_size=28))


def test_names_official_and_unknown():
  assert datasets.canonical_name(small_config(dataset='CIFAR10')) == 'cifar10'
  assert datasets.canonical_name(small_config(dataset='SVHN')) == 'svhn_cropped'
  assert datasets.canonical_name(small_config(dataset='lsun/church_outdoor')) == 'lsun'
  with pytest.raises(datasets.DatasetError, match="known: .*cifar10.*image_folder"):
    datasets.canonical_name(small_config(dataset='cifar100'))
  with pytest.raises(datasets.DatasetError, match='category'):
    datasets.canonical_name(small_config(dataset='LSUN'))


def test_a_missing_tfds_dataset_fails_fast_in_process(tmp_path):
  import tensorflow_datasets  # noqa: F401  (the import is not what is timed)
  start = time.perf_counter()
  with pytest.raises(datasets.DatasetError, match='download=True'):
    datasets.get_dataset(small_config(dataset='cifar10', num_channels=3, image_size=32, data_dir=str(tmp_path)))
  assert time.perf_counter() - start < 5.


def test_a_missing_tfds_dataset_is_one_line_and_exit_2_from_the_cli(tmp_path):
  workdir = tmp_path / 'run'
  start = time.perf_counter()
  code, out, err = finish(run_cli(workdir, '--mode=train', '--config.data.dataset=cifar10',
                                  f'--config.data.data_dir={tmp_path / "empty"}', '--config.data.num_channels=3',
                                  '--config.data.image_size=32', config=QUICKSTART), timeout=120)
  elapsed = time.perf_counter() - start
  assert code == 2, err[-2000:]
  assert len(err.strip().splitlines()) == 1 and 'cifar10' in err and 'data_dir' in err, err
  assert not workdir.exists()
  assert elapsed < 60, elapsed  # imports included; the failure itself is timed in-process above


def test_uniform_dequantization_is_the_official_formula():
  """Official: (u + 255 x) / 256 for 8-bit images; with 17 grey levels, (16 x + u) / 17."""
  x = np.random.default_rng(3).integers(0, 256, (5, 4, 4, 3)).astype(np.float32) / 255
  ours = datasets.uniform_dequantize(x, np.random.default_rng(7), 256)
  u = np.random.default_rng(7).random(x.shape, dtype=np.float32)
  np.testing.assert_allclose(ours, (u + 255 * x) / 256, atol=1e-6)
  digits = np.random.default_rng(4).integers(0, 17, (50,)).astype(np.float32) / 16
  spread = datasets.uniform_dequantize(digits, np.random.default_rng(8), 17)
  assert np.all(np.floor(spread * 17) == np.round(digits * 16))  # each level stays in its own bin


def test_digits_come_with_their_labels_and_resume_sees_the_same_ones():
  """Each row's label is the one scikit-learn gives that image; a stream started at step 3 is the 4th batch, labels
  included; images and labels of the held-out split too."""
  config = small_config(dataset='digits')
  train, train_labels, test, test_labels = datasets.digits_split(config.data.num_test)
  digit_of = {image.tobytes(): label for image, label in zip(train, train_labels)}
  dataset = datasets.get_dataset(config)
  stream = dataset.train_batches(0)
  batches = [next(stream) for _ in range(4)]
  for batch in batches:
    assert [digit_of[image.tobytes()] for image in batch['image']] == batch['label'].tolist()
  resumed = next(dataset.train_batches(3))
  assert all(np.array_equal(resumed[k], batches[3][k]) for k in ('image', 'label'))
  held_out = next(dataset.eval_batches())
  np.testing.assert_array_equal(held_out['label'], test_labels[:4])
  np.testing.assert_array_equal(held_out['image'], test[:4])
  assert datasets.spec(config).num_classes == dataset.num_classes == 10


def test_toy_labels_are_the_components_and_the_points_are_unchanged():
  from score_sde import config_table, toy
  import jax
  config = config_table.load(str(REPO / 'configs' / 'toy' / 'gmm.py'))
  config.training.batch_size = 2000
  mixture = toy.get_toy_distribution('gmm')
  batch = next(datasets.get_dataset(config).train_batches(5))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
  as_it_was = jax.jit(lambda step: mixture.sample(jax.random.fold_in(key, step), 2000))(5)  # the stream's own draw
  np.testing.assert_array_equal(batch['image'], np.asarray(as_it_was))
  assert np.mean(mixture.assign(batch['image']) == batch['label']) > 0.99  # well separated: nearly all on their own
  assert np.bincount(batch['label']).tolist() == pytest.approx([400, 600, 1000], abs=90)  # weights 0.2, 0.3, 0.5
