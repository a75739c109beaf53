"""End to end: train the MLP on the 2-D mixture with the real loss and step, then sample."""
import pathlib

import jax
import jax.numpy as jnp

from score_sde import losses, models, sampling, sde_lib, toy

CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'toy' / 'gmm.py'


def load_config(path):
  from score_sde import config_table
  return config_table.load(str(path))


def test_trained_mlp_samples_pass_the_mixture_checks():
  config = load_config(CONFIG)
  config.model.nf = 64
  mixture = toy.get_toy_distribution(config.data.dataset)
  sde = sde_lib.get_sde(config)
  model = models.get_model(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones(1))['params']
  optimizer = losses.get_optimizer(config)
  step_fn = losses.get_step_fn(sde, model, train=True, optimizer=optimizer, reduce_mean=config.training.reduce_mean,
                               continuous=True, ema_rate=config.model.ema_rate)

  @jax.jit
  def train(state, data_rng):
    def one_step(state, rng):
      return step_fn(state, {'image': mixture.sample(rng, config.training.batch_size)})
    return jax.lax.scan(one_step, state, jax.random.split(data_rng, config.training.n_iters))

  state, metrics = train(losses.init_train_state(jax.random.PRNGKey(1), params, optimizer), jax.random.PRNGKey(2))
  assert bool(jnp.all(jnp.isfinite(metrics['loss'])))

  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, train=False, continuous=True)
  sampler = sampling.get_pc_sampler(sde, (4000, 2), 'reverse_diffusion', 'none')
  samples, _ = sampler(jax.random.PRNGKey(3), score_fn)
  report = toy.mixture_report(samples, mixture, jax.random.PRNGKey(4))
  failures = toy.mixture_failures(report, weight_tol=0.05, mean_tol=0.3, std_tol=0.25, ks_tol=0.1)
  assert not failures, (failures, report)
