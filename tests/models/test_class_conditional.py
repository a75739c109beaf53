"""Class-conditional networks (model.num_classes), the score seam that carries their labels, and label dropout."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO
from score_sde import config_table, losses, models, sde_lib

NUM_CLASSES = 4
TINY = {  # model family -> config file and overrides: each network at its smallest
    'ncsnpp': ('quickstart.py', {'model.nf': 8, 'model.ch_mult': (1,), 'model.attn_resolutions': ()}),
    # 64 channels: two per GroupNorm group (with one, the norm removes any per-channel shift, embeddings included)
    'ddpm': ('quickstart.py', {'model.name': 'ddpm', 'model.nf': 64, 'model.ch_mult': (1,), 'model.attn_resolutions': (),
                               'model.num_res_blocks': 1}),
    'ncsnv2': ('quickstart.py', {'model.name': 'ncsnv2_64', 'model.nf': 8, 'model.normalization': 'InstanceNorm++',
                                 'data.image_size': 16}),
    'mlp': ('toy/gmm.py', {'model.nf': 16}),
}


def tiny_config(family, num_classes):
  path, fields = TINY[family]
  config = config_table.load(str(REPO / 'configs' / path))
  for dotted, value in {**fields, 'model.num_classes': num_classes}.items():
    section, name = dotted.split('.')
    config[section][name] = value
  return config


def example_shape(config):
  return (2,) if config.model.name == 'mlp' else (config.data.image_size,) * 2 + (config.data.num_channels,)


def shapes(config, batch=3):
  """The network and its variables' shapes (traced only: no compile)."""
  model = models.get_model(config)
  x = jnp.zeros((batch,) + example_shape(config))
  return model, jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                                                  x, jnp.ones(batch), train=False))


def random_variables(shaped, scale=0.2):
  """N(0, scale²) everywhere: compiling a network's init costs more than the test, and at init the last layer of
  some networks is zero, so that nothing would reach the output."""
  rng = np.random.default_rng(2)  # numpy: one jax draw per leaf would compile once per leaf shape
  return jax.tree.map(lambda leaf: jnp.asarray(scale * rng.normal(size=leaf.shape), jnp.float32), shaped)


def paths(variables):
  return {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


@pytest.mark.parametrize('family', list(TINY))
def test_a_class_conditional_network_adds_one_embedding_table_and_reads_each_label(family):
  """The unconditional tree plus 'class_embed' (K + 1 rows, the last the null label) and nothing renamed; an
  example's label changes its own output only, and no labels is the null label."""
  config = tiny_config(family, NUM_CLASSES)
  _, unconditional = shapes(tiny_config(family, 0))
  model, variables = shapes(config)
  extra = {p: s for p, s in paths(variables).items() if p not in paths(unconditional)}
  assert list(extra) == ["['params']['class_embed']['embedding']"] and extra[list(extra)[0]][0] == NUM_CLASSES + 1
  assert all(paths(variables)[p] == s for p, s in paths(unconditional).items())
  variables = random_variables(variables)
  x = jax.random.normal(jax.random.PRNGKey(3), (3,) + example_shape(config))
  time = 0.5 if config.model.embedding_type == 'fourier' else 500.
  # three copies of the same three inputs in one batch: labels (0, 1, 2), (3, 1, 2) and the null label
  apply = jax.jit(functools.partial(model.apply, variables))
  labelled = np.asarray(apply(jnp.tile(x, (3,) + (1,) * (x.ndim - 1)), jnp.full((9,), time),
                              class_labels=jnp.asarray([0, 1, 2, 3, 1, 2] + [NUM_CLASSES] * 3)))
  first, second, null = labelled.reshape((3, 3, -1))
  changed = np.abs(first - second).max(1)
  assert changed[0] > 1e-3 * np.abs(first).max() and changed[1:].max() < 1e-6 * np.abs(first).max()
  unlabelled = np.asarray(apply(x, jnp.full((3,), time))).reshape(3, -1)
  np.testing.assert_allclose(unlabelled, null, rtol=1e-4, atol=1e-5 * np.abs(null).max())


def test_the_score_seam_carries_labels_and_none_is_the_null_label():
  config = tiny_config('mlp', NUM_CLASSES)
  model, variables = shapes(config)
  variables = random_variables(variables)
  sde = sde_lib.get_sde(config)
  x, t = jax.random.normal(jax.random.PRNGKey(4), (3, 2)), jnp.full((3,), 0.4)
  for parametrization in ('score', 'edm'):
    score_fn = models.get_score_fn(sde, model, variables, continuous=True, parametrization=parametrization)
    np.testing.assert_array_equal(score_fn(x, t), score_fn(x, t, jnp.full((3,), NUM_CLASSES)))
    assert np.abs(score_fn(x, t, jnp.asarray([0, 1, 2])) - score_fn(x, t)).max() > 1e-4
  unconditional_model, unconditional = shapes(tiny_config('mlp', 0))
  score_fn = models.get_score_fn(sde, unconditional_model, unconditional, continuous=True)
  with pytest.raises(ValueError, match='unconditional'):
    score_fn(x, t, jnp.asarray([0, 1, 2]))


def conditional_stub(num_classes):
  """What losses read of a model: its config's model.num_classes."""
  return types.SimpleNamespace(config=types.SimpleNamespace(model=types.SimpleNamespace(num_classes=num_classes)))


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
  labels = jnp.arange(20000) % NUM_CLASSES
  rng = jax.random.PRNGKey(5)
  dropped = np.asarray(losses.training_labels(conditional_stub(NUM_CLASSES), {'label': labels}, rng, 0.3))
  null = dropped == NUM_CLASSES
  assert abs(null.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(labels))
  np.testing.assert_array_equal(dropped[~null], np.asarray(labels)[~null])
  kept = losses.training_labels(conditional_stub(NUM_CLASSES), {'label': labels}, rng, 0.)
  np.testing.assert_array_equal(kept, labels)
  assert losses.training_labels(conditional_stub(0), {'label': labels}, rng, 0.3) is None  # unconditional


def test_conditioning_leaves_the_losses_own_random_draws_alone():
  """With label dropout 1 (every label the null one) the loss equals that of a batch of null labels with the same key:
  the dropout draw, from a key folded off the loss's, moves none of the loss's own draws of t and z."""
  config = tiny_config('mlp', NUM_CLASSES)
  model, variables = shapes(config)
  variables = random_variables(variables)
  sde = sde_lib.get_sde(config)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(6), (64, 2)), 'label': jnp.arange(64) % NUM_CLASSES}
  rng = jax.random.PRNGKey(7)
  all_null = losses.get_loss_fn(sde, model, False, label_dropout=1.)(rng, variables['params'], batch)
  null_batch = {**batch, 'label': jnp.full((64,), NUM_CLASSES)}
  reference = losses.get_loss_fn(sde, model, False)(rng, variables['params'], null_batch)
  assert float(all_null) == float(reference)
  with_labels = losses.get_loss_fn(sde, model, False)(rng, variables['params'], batch)
  assert float(with_labels) != float(reference)
