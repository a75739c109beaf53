"""A small digits classifier, trained here, whose features stand in for Inception's on 8×8 digits.

It is NOT Inception: a Fréchet distance on its features is a "digits-classifier FD", comparable only
with other numbers from the same shipped weights (assets/digits_classifier.npz), never with Inception FID.
Regenerate the weights with `python experiments/train_digits_classifier.py`.
"""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde.models import npz_weights
from score_sde.metrics.formulas import in_batches

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / 'assets' / 'digits_classifier.npz'
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
  """8×8×1 → conv 3×3 ×8 → conv 3×3 ×8 → avg-pool 2 → dense 64 (the features) → dense 10 (logits)."""
  channels: int = 8
  features: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x):
    x = resize_to_8x8(x)
    x = nn.swish(nn.Conv(self.channels, (3, 3))(x))
    x = nn.swish(nn.Conv(self.channels, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(len(x), -1)
    feats = nn.swish(nn.Dense(self.features)(x))
    return feats, nn.Dense(10)(feats)


def resize_to_8x8(images):
  """(n, H, W, 1) → (n, 8, 8, 1), bilinear (as datasets._digits resizes the other way)."""
  if images.shape[1:3] == (8, 8):
    return images
  return jax.image.resize(images, (images.shape[0], 8, 8, images.shape[3]), 'bilinear')


def train(split, seed=0, steps=1000, batch_size=128, learning_rate=3e-3, weight_decay=1e-4):
  """Adam(W) on the training part of `split` (datasets.digits_split()), minibatches in a fixed order from
  default_rng(seed).

  The one augmentation is a copy of each image blurred as a 16×16 digit is by resize_to_8x8 (8 → 16 → 8),
  so that models trained at image_size 16 or 32 are scored as fairly as at 8. Returns (variables, accuracy on
  the held-out split).
  """
  x_train, y_train, x_test, y_test = split
  up = jax.image.resize(x_train, (len(x_train), 16, 16, 1), 'bilinear')
  x_train = np.concatenate([x_train, np.asarray(resize_to_8x8(up))])
  y_train = np.concatenate([y_train, y_train])
  model = DigitsClassifier()
  rng = np.random.default_rng(seed)
  params = _init_params(model, rng)
  optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
  opt_state = jax.jit(optimizer.init)(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x)[1], y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batches_per_epoch = len(x_train) // batch_size
  for i in range(steps):
    if i % batches_per_epoch == 0:
      perm = rng.permutation(len(x_train))
    idx = perm[(i % batches_per_epoch) * batch_size:][:batch_size]
    params, opt_state = step(params, opt_state, x_train[idx], y_train[idx])
  variables = {'params': params}
  return variables, accuracy(variables, x_test, y_test)


def _init_params(model, rng):
  """LeCun-normal kernels and zero biases drawn with numpy: model.init's threefry takes seconds to compile on CPU."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return jnp.zeros(leaf.shape, jnp.float32)
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def accuracy(variables, images, labels):
  _, logits = get_feature_fn(variables)(images)
  return float(np.mean(logits.argmax(1) == labels))


def save(variables, path=WEIGHTS):
  npz_weights.save(variables, path)


def load(path=WEIGHTS):
  """The shipped variables (or those at `path`)."""
  return npz_weights.load(path, 'python experiments/train_digits_classifier.py')


def get_feature_fn(variables=None, batch_size=256):
  """images (n, H, W, 1) in [0, 1] → (features (n, 64), logits (n, 10)), numpy float32.

  Jitted and run in batches of `batch_size` (the last padded), so any n compiles once per image size.
  """
  variables = load() if variables is None else variables
  apply = jax.jit(DigitsClassifier().apply)
  return lambda images: in_batches(lambda batch: apply(variables, batch), images, batch_size)
