"""Held-out denoising error of trained runs at fixed noise levels: E‖D(x̃; σ̃) − x_0‖² per dimension.

  python experiments/denoiser_error.py --workdir runs/quickstart --workdir runs/quickstart_edm

D is each run's estimate of E[x_0 | x_t] (its EMA weights): EDM's preconditioned denoiser itself, or Tweedie's
(x + σ² s)/α from a score network (models.utils.ScoreFn.denoise). x_0 is the held-out split, scaled as the run
trains on it (no dequantization), x_t = α x_0 + σ z at the time whose σ̃ = σ/α is each level, with --repeats noise
draws of z from --seed, the same for every run. This is EDM's loss before its weighting λ(σ̃): runs trained with
different losses and parametrizations compare level by level. A level outside a run's SDE range [σ̃(eps), σ̃(T)]
reads '-'. Prints a Markdown table, with each run's ratio to the first. Exit codes: 0 ok, 2 a run without a checkpoint.
"""
import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.5, 1., 2., 5., 20., 80.)


def denoising_errors(workdir, sigmas, repeats=8, seed=0):
  """{σ̃: mean squared error per dimension of D on the held-out split}; NaN where σ̃ is outside the SDE's range."""
  import jax
  import jax.numpy as jnp
  from score_sde import datasets, losses, models, sde_lib
  from score_sde.runner import checkpoints
  state = checkpoints.restore(workdir) if checkpoints.has_checkpoint(workdir) else None
  if state is None:
    raise FileNotFoundError(f'{workdir} has no checkpoint; train it first.')
  config = checkpoints.load_config(workdir)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  scaler = datasets.get_data_scaler(config)
  x0 = jnp.asarray(np.concatenate([scaler(b['image']) for b in datasets.get_dataset(config).eval_batches()]))
  lo, hi = losses.edm_log_sigma_range(sde, eps=1e-5)

  @jax.jit
  def squared_error(sigma_tilde, key):
    t = sde.t_from_log_snr(-jnp.log(jnp.full((len(x0),), sigma_tilde)))
    alpha, sigma = sde.marginal_coeffs(t)
    x = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * jax.random.normal(key, x0.shape)
    return jnp.mean((score_fn.denoise(x, t) - x0) ** 2)

  keys = [jax.random.fold_in(jax.random.PRNGKey(seed), r) for r in range(repeats)]
  return {s: (float(np.mean([squared_error(s, k) for k in keys])) if lo <= np.log(s) <= hi else float('nan'))
          for s in sigmas}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', action='append', required=True, help='a trained run (repeat for several)')
  parser.add_argument('--sigmas', type=float, nargs='+', default=SIGMAS, help='noise levels σ̃')
  parser.add_argument('--repeats', type=int, default=8, help='noise draws per level')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  try:
    errors = {w: denoising_errors(w, args.sigmas, args.repeats, args.seed) for w in args.workdir}
  except FileNotFoundError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  cell = lambda v: '-' if np.isnan(v) else f'{v:.4g}'
  print('| run | ' + ' | '.join(f'σ̃ = {s:g}' for s in args.sigmas) + ' |')
  print('|---' * (len(args.sigmas) + 1) + '|')
  first = errors[args.workdir[0]]
  for w, row in errors.items():
    print(f'| {w} | ' + ' | '.join(cell(row[s]) for s in args.sigmas) + ' |')
  for w, row in list(errors.items())[1:]:
    print(f'| {w} / {args.workdir[0]} | ' + ' | '.join(cell(row[s] / first[s]) for s in args.sigmas) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
