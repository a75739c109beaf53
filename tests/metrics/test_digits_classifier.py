"""The shipped digits classifier: held-out accuracy against sklearn's labels, and FD that tells digits from noise."""
import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from score_sde import datasets
from score_sde.metrics import digits_classifier, formulas


@pytest.fixture(scope='module')
def digits():
  data = load_digits()
  return (data.images / 16.).astype(np.float32)[..., None], data.target


@pytest.fixture(scope='module')
def feature_fn():
  return digits_classifier.get_feature_fn()


def _held_out(digits):
  images, labels = digits
  test = np.random.default_rng(0).permutation(len(images))[:297]  # the test split of datasets._digits
  return images[test], labels[test]


def test_shipped_weights_classify_held_out_digits(digits, feature_fn):
  images, labels = _held_out(digits)
  feats, logits = feature_fn(images)
  assert feats.shape == (297, 64) and logits.shape == (297, 10) and feats.dtype == np.float32
  assert np.mean(logits.argmax(1) == labels) >= 0.95  # measured 0.976


def test_fd_separates_digits_from_noise(digits, feature_fn):
  images, _ = digits
  order = np.random.default_rng(1).permutation(len(images))
  half_a, half_b = feature_fn(images[order[:898]])[0], feature_fn(images[order[898:]])[0]
  noise = feature_fn(np.random.default_rng(2).uniform(size=(899, 8, 8, 1)))[0]
  split_half = formulas.fid_from_features(half_a, half_b)
  real_vs_noise = formulas.fid_from_features(half_a, noise)
  assert split_half < 10.  # measured 4.7
  assert real_vs_noise > 100.  # measured 393
  assert real_vs_noise > 20 * split_half


def test_resizes_16x16_input(digits, feature_fn):
  images, labels = _held_out(digits)
  big = np.asarray(jax.image.resize(images, (len(images), 16, 16, 1), 'bilinear'))
  feats, logits = feature_fn(big)
  assert feats.shape == (297, 64)
  assert np.mean(logits.argmax(1) == labels) >= 0.95  # measured 0.983 (train() augments with this blur)


def test_batching_does_not_change_features(digits):
  images, _ = _held_out(digits)
  variables = digits_classifier.load()
  whole = digits_classifier.get_feature_fn(variables, batch_size=297)(images)
  padded = digits_classifier.get_feature_fn(variables, batch_size=128)(images)  # 3 batches, the last padded
  for a, b in zip(whole, padded):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_missing_weights_raise_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='train_digits_classifier.py'):
    digits_classifier.load(tmp_path / 'absent.npz')


def test_retraining_reproduces_the_shipped_features(digits, feature_fn):
  """FDs are comparable only on identical features, so train() must rebuild the shipped weights' features."""
  images, labels = _held_out(digits)
  shipped_feats, shipped_logits = feature_fn(images)
  variables, retrained = digits_classifier.train(datasets.digits_split(), seed=0)
  feats, logits = digits_classifier.get_feature_fn(variables)(images)
  # measured bitwise equal (features up to ~16); the tolerance leaves room for other CPUs and XLA versions
  np.testing.assert_allclose(feats, shipped_feats, rtol=0, atol=1e-4)
  np.testing.assert_allclose(logits, shipped_logits, rtol=0, atol=1e-4)
  assert retrained == np.mean(shipped_logits.argmax(1) == labels)
