"""Wall time per sample of every registered sampler, on the quickstart's U-Net (untrained) and a toy MLP.

Prints a Markdown table: score evaluations (NFE, with the final denoising step), compile time, wall time per
batch and per sample (best of `--repeats` runs after compiling), and time per NFE. The networks are freshly
initialised: speed does not depend on training, except for the adaptive ODE, whose NFE here is that of an
untrained network (the quickstart's trained network takes a comparable number).

  python benchmarks/sampler_speed.py [--repeats 1] [--unet_batch 32] [--mlp_batch 1024]

PC with the Langevin corrector costs twice PC alone (2 NFE per step). About 5 minutes on 2 busy CPU cores.
"""
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from score_sde import config_table, models, sampling, sde_lib  # noqa: E402

SETTINGS = [  # (label, sampler name, options)
    ('pc 1000 (reverse_diffusion)', 'pc', {'predictor': 'reverse_diffusion', 'corrector': 'none'}),
    ('ode (RK45, 1e-5)', 'ode', {}),
    ('ddim 20', 'ddim', {'num_steps': 20}),
    ('dpm_solver++ 2M 20', 'dpm_solver++', {'num_steps': 20, 'order': 2}),
    ('dpm_solver++ 3M 20', 'dpm_solver++', {'num_steps': 20, 'order': 3}),
    ('edm_heun 11 levels', 'edm_heun', {'num_steps': 11}),
    ('edm_heun 18 levels', 'edm_heun', {'num_steps': 18}),
]


def timed(fn, repeats):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return first - best, best, out


def quickstart_unet():
  config = config_table.load(str(REPO / 'configs' / 'quickstart.py'))
  model = models.get_model(config)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  variables = jax.jit(lambda rng: model.init({'params': rng, 'dropout': rng}, jnp.zeros((1,) + shape),
                                             jnp.ones((1,)), train=False))(jax.random.PRNGKey(0))
  sde = sde_lib.get_sde(config)
  return 'quickstart U-Net (VP, 8x8x1)', sde, models.get_score_fn(sde, model, variables, continuous=True), shape


def toy_mlp():
  config = ml_collections.ConfigDict({'model': dict(name='mlp', nf=128, num_layers=3, nonlinearity='swish',
                                                    embedding_type='fourier', fourier_scale=16.,
                                                    scale_by_sigma=False)})
  model = models.get_model(config)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)), jnp.ones(1))
  sde = sde_lib.VPSDE()
  return 'MLP (VP, 2-D)', sde, models.get_score_fn(sde, model, variables, continuous=True), (2,)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--unet_batch', type=int, default=32)
  parser.add_argument('--mlp_batch', type=int, default=1024)
  args = parser.parse_args()
  header = ['network', 'batch', 'sampler', 'NFE', 'compile s', 'batch s', 'ms / sample', 'ms / NFE']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for (name, sde, score_fn, shape), batch in ((quickstart_unet(), args.unet_batch), (toy_mlp(), args.mlp_batch)):
    for label, method, options in SETTINGS:
      sampler = sampling.get_sampler(method, sde, (batch,) + shape, **options)
      compile_s, run_s, (_, nfe) = timed(lambda: sampler(jax.random.PRNGKey(1), score_fn), args.repeats)
      nfe = int(nfe)
      print(f'| {name} | {batch} | {label} | {nfe} | {compile_s:.1f} | {run_s:.3f} | '
            f'{1e3 * run_s / batch:.3f} | {1e3 * run_s / nfe:.2f} |', flush=True)
  print(f'\n{jax.device_count()} {jax.default_backend()} device(s). NFE includes the final denoising step '
        '(PC: the last noise-free mean costs none). Compile s = first call minus the best later call.')


if __name__ == '__main__':
  main()
