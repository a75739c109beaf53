"""The train state of a run, built from its config: what a checkpoint holds."""
import jax
import jax.numpy as jnp

from score_sde import datasets, losses, models


def create_train_state(config, rng):
  """The initial train state. Compiled: eager flax init of a U-Net dispatches op by op and takes twice as long
  (the values are the same bit for bit)."""
  model = models.get_model(config)
  shape = datasets.spec(config).shape

  def create(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng, 'dropout': init_rng}, jnp.zeros((1,) + shape), jnp.ones((1,)),
                           train=False)
    return losses.init_train_state(state_rng, variables['params'], losses.get_optimizer(config))
  return jax.jit(create)(rng)


def abstract_train_state(config):
  """Shapes and dtypes of the state, without computing it."""
  return jax.eval_shape(lambda: create_train_state(config, jax.random.PRNGKey(config.seed)))


def num_params(state):
  return sum(int(x.size) for x in jax.tree.leaves(state.params))
