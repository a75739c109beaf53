"""How much a PC step costs beyond its score evaluations, and the cost of one ODE-likelihood NFE.

Prints a table. The sampler loop is one XLA program; its overhead is the time of a full
sampler run minus the time of the same number of bare score evaluations (also in one
compiled loop), per step, relative to the score time of a step.

  python benchmarks/sampler_overhead.py
"""
import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde import likelihood, models, sampling, sde_lib


class SmallConvNet(nn.Module):
  """A small time-conditioned conv net (32 channels, 3 convs) on 16×16×3 images."""

  @nn.compact
  def __call__(self, x, time_cond, train=False):
    temb = nn.Dense(32)(jnp.log(time_cond)[:, None])
    h = nn.swish(nn.Conv(32, (3, 3))(x) + temb[:, None, None, :])
    h = nn.swish(nn.Conv(32, (3, 3))(h))
    # A near-zero output layer, like NCSN++'s init_scale=0: the flow of an untrained net stays smooth.
    out = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.normal(1e-3))(h)
    return out / time_cond[:, None, None, None]


def timed(fn, *args, repeats=2):
  jax.block_until_ready(fn(*args))  # compile
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def bare_score_time(score_fn, shape, n_evals):
  """Seconds for n_evals chained score evaluations inside one compiled loop."""
  @jax.jit
  def run(x):
    def body(x, t):
      return x - 1e-6 * score_fn(x, jnp.full((shape[0],), t)), None
    return jax.lax.scan(body, x, jnp.linspace(1., 1e-3, n_evals))[0]
  return timed(run, jax.random.normal(jax.random.PRNGKey(3), shape))


def noise_time(shape, n_draws):
  """Seconds for n_draws Gaussian draws of `shape` (threefry) inside one compiled loop."""
  @jax.jit
  def run(rng):
    return jax.lax.fori_loop(0, n_draws, lambda i, acc: acc + jax.random.normal(jax.random.fold_in(rng, i), shape),
                             jnp.zeros(shape))
  return timed(run, jax.random.PRNGKey(0))


def measure(name, model, variables, shape, n_steps):
  sde = sde_lib.VESDE(N=n_steps)
  score_fn = models.get_score_fn(sde, model, variables, continuous=True)
  sampler = sampling.get_pc_sampler(sde, shape, 'reverse_diffusion', 'langevin', n_steps=1)
  sampler_time = timed(lambda rng: sampler(rng, score_fn)[0], jax.random.PRNGKey(0))
  score_time = bare_score_time(score_fn, shape, 2 * n_steps)
  draws_time = noise_time(shape, 2 * n_steps)
  per_step = sampler_time / n_steps
  overhead = (sampler_time - score_time) / n_steps
  loop_overhead = overhead - draws_time / n_steps
  likelihood_fn = likelihood.get_likelihood_fn(sde, rtol=1e-3, atol=1e-3)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  lik_time = timed(lambda x: likelihood_fn(jax.random.PRNGKey(2), score_fn, x)[0], x)
  nfe = int(likelihood_fn(jax.random.PRNGKey(2), score_fn, x)[2])
  score_per_step = score_time / n_steps
  return (name, shape, per_step * 1e3, score_per_step * 1e3, overhead * 1e3, 100 * overhead / score_per_step,
          draws_time / n_steps * 1e3, 100 * loop_overhead / score_per_step,
          lik_time / nfe * 1e3, score_time / (2 * n_steps) * 1e3)


def main():
  config = ml_collections.ConfigDict({'model': dict(name='mlp', nf=128, num_layers=3, nonlinearity='swish',
                                                    embedding_type='fourier', fourier_scale=16.,
                                                    scale_by_sigma=True)})
  mlp = models.get_model(config)
  mlp_vars = mlp.init(jax.random.PRNGKey(0), jnp.ones((1, 2)), jnp.ones(1))
  conv = SmallConvNet()
  conv_vars = conv.init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)), jnp.ones(1))
  header = ('model', 'batch shape', 'PC step ms', 'score evals ms/step', 'beyond score ms/step',
            'beyond score %', 'of which noise draws ms/step', 'loop overhead % (excl. draws)',
            'ODE-lik ms/NFE', 'one score eval ms')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for args in (('mlp (nf=128, 3 layers)', mlp, mlp_vars, (1024, 2), 300),
               ('small conv net (32 ch)', conv, conv_vars, (16, 16, 16, 3), 100)):
    row = measure(*args)
    print('| ' + ' | '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in row) + ' |', flush=True)
  print('\nPC: reverse_diffusion + langevin (2 score evaluations and 2 Gaussian draws per step). '
        '"beyond score" = (sampler - bare score evaluations) / steps; the Gaussian draws the algorithm needs '
        '(threefry on CPU) are timed alone and subtracted for the loop overhead. '
        'ODE likelihood: rademacher, rtol=atol=1e-3; one NFE is a score JVP.')


if __name__ == '__main__':
  argparse.ArgumentParser(description=__doc__).parse_args()  # --help; the benchmark takes no options
  main()
