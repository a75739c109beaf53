"""What a likelihood figure costs: the probability-flow ODE bpd and the score_flow bound on a trained run, as the
standard error they reach per score evaluation.

  python benchmarks/likelihood_cost.py [--workdir runs/quickstart] [--rtol 1e-5 1e-4] [--num_t 16 64 256 1000]
      [--repeats 2]

Every estimator sees the same held-out images (the eval's full batches), dequantized once with the draw that
--mode eval makes first, and runs --repeats times with independent estimator noise (the ODE's Hutchinson probe,
the bound's (t, z) draws), repeat r with the key --mode eval gives repeat r: repeat 0 of the ODE at the run's
own tolerance is the eval's ODE bpd. The ODE runs at atol = rtol. Prints a Markdown table:
- mean ± s.e.: over the images, an image's repeats averaged;
- noise sd: the estimator's own standard deviation for one image (from the repeats, averaged over images);
- sd: the standard deviation of one estimate over images (image-to-image spread and estimator noise);
- score evaluations and seconds per image (compilation excluded). An ODE evaluation is a Jacobian-vector product
  of the network (about 2-3 forward passes of work), a bound evaluation one forward pass: compare seconds too;
- the standard error per score evaluation: noise sd × √nfe is the standard error of one image's figure when B
  score evaluations are spent on it, times √B; sd × √nfe the same for the mean over images, spending B on
  fresh images. The same with √seconds.
The first line is the machine: the best rate of a 2048² float32 matmul, measured in the same run.
"""
import argparse
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument('--workdir', default='runs/quickstart', help='a trained run (its config.json and checkpoint)')
  parser.add_argument('--rtol', type=float, nargs='+', default=[1e-5, 1e-4], help='ODE tolerances (atol = rtol)')
  parser.add_argument('--num_t', type=int, nargs='+', default=[16, 64, 256, 1000], help='bound: (t, z) draws')
  parser.add_argument('--repeats', type=int, default=2, help='independent estimates per image (at least 2)')
  return parser.parse_args(argv)


def settings(args):
  """[(label, eval field overrides)] of every estimator to measure."""
  return ([(f'ODE, rtol {rtol:g}', {'bpd_method': 'ode', 'likelihood_rtol': rtol, 'likelihood_atol': rtol})
           for rtol in args.rtol]
          + [(f'bound, num_t {n}', {'bpd_method': 'bound', 'bound_num_t': n}) for n in args.num_t])


def measure(config, overrides, dataset, sde, score_fn, repeats):
  """Per image and repeat: the values (repeats, images), score evaluations and seconds per image."""
  import jax
  import numpy as np
  from score_sde.runner import bpd_estimators, evaluate
  config = config.copy_and_resolve_references()
  config.eval.update(overrides)
  (name, estimate), = bpd_estimators.get_estimators(config, sde, dataset).items()
  values, nfe, seconds, count = [], 0., 0., 0
  for r in range(repeats):
    row = []
    for i, batch in enumerate(evaluate.bpd_batches(config, dataset)):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), r), i)
      done = estimate(score_fn, batch['image'], [config.seed, 0, i], key)  # one dequantization for all
      row.append(done[name])
      nfe, seconds, count = nfe + float(done['nfe']) * len(done[name]), seconds + float(done['seconds']), count + len(done[name])
    values.append(np.concatenate(row))
  return np.stack(values), nfe / count, seconds / count


def table_row(label, values, nfe, seconds):
  import numpy as np
  per_image = values.mean(axis=0)
  mean, se = per_image.mean(), per_image.std(ddof=1) / np.sqrt(len(per_image))
  noise = np.sqrt(values.var(axis=0, ddof=1).mean())
  spread = values.std(axis=1, ddof=1).mean()
  return (f'| {label} | {mean:.4f} ± {se:.4f} | {noise:.4f} | {spread:.3f} | {nfe:.0f} | {seconds * 1e3:.1f} | '
          f'{noise * np.sqrt(nfe):.3f} | {spread * np.sqrt(nfe):.2f} | {noise * np.sqrt(seconds):.4f} | '
          f'{spread * np.sqrt(seconds):.3f} |')


def main(argv=None):
  args = parse_args(argv)
  if args.repeats < 2:
    print('error: --repeats must be at least 2 (the estimator noise is measured between repeats)', file=sys.stderr)
    return 2
  if min(args.num_t, default=1) < 1 or min(args.rtol, default=1) <= 0:
    print('error: --num_t must be positive integers and --rtol positive numbers', file=sys.stderr)
    return 2
  workdir = os.path.join(REPO, args.workdir)
  from score_sde.runner import checkpoints
  if not checkpoints.has_checkpoint(workdir):
    print(f'error: no checkpoint in {args.workdir}; train it first: python run.py --config configs/quickstart.py '
          f'--workdir {args.workdir} --mode train', file=sys.stderr)
    return 2
  from benchmarks.network_speed import matmul_gflops
  from score_sde import datasets, models, sde_lib
  from score_sde.runner import run_state
  config = checkpoints.load_config(workdir)
  state = checkpoints.restore(workdir, run_state.abstract_train_state(config))
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  dataset = datasets.get_dataset(config)
  print(f'Machine: 2048² float32 matmul {matmul_gflops():.0f} GFLOP/s (best of 20). Run {args.workdir}, step '
        f'{int(state.step)}, {args.repeats} repeats per image.\n', flush=True)
  print('| estimator | mean ± s.e. (bpd) | noise sd | sd | score evaluations / image | ms / image | '
        'noise sd × √nfe | sd × √nfe | noise sd × √s | sd × √s |')
  print('|---|---|---|---|---|---|---|---|---|---|', flush=True)
  for label, overrides in settings(args):
    print(table_row(label, *measure(config, overrides, dataset, sde, score_fn, args.repeats)), flush=True)
  print(f'\nAfter: 2048² matmul {matmul_gflops():.0f} GFLOP/s.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
