"""Paired likelihood comparison of evaluated runs, image by image over the same dequantization draws.

  python experiments/likelihood_pairs.py --pair <baseline workdir> <other workdir> [--pair ...] [--eval_folder eval]
  python experiments/likelihood_pairs.py --sweep experiments/sweeps/toy_mle.py --pair_key training.likelihood_weighting

Reads what --mode eval kept of each run's newest evaluated checkpoint (the ODE bpd 'bpd' and the bound 'bound',
per image: runner.evaluate.per_example_values). Runs evaluated with the same seed and eval settings saw the same
held-out images, dequantization draws and estimator noise, so their difference is measured per image: the mean
difference other − baseline ± its paired standard error, and that difference in standard errors (z). For toy data
with a known density (score_sde.toy) it adds the exact bits/dim of the same points, each run's gap to it and the
share of the baseline's gap that the other run closes. The Fréchet distance of each run's samples is listed too
(unpaired). With --sweep, the trials that differ only in --pair_key are paired, its first grid value the
baseline. Prints the table and writes <out>/pairs.md and pairs.csv. Exit codes: 0 ok, 2 bad arguments or a run
without kept rounds.
"""
import argparse
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results, sweep  # noqa: E402

FIGURES = {'bpd': 'ODE bpd', 'bound': 'bound'}
COLUMNS = ['baseline', 'other', 'other - baseline', 'z (paired)', 'exact', 'baseline gap', 'other gap',
           'share of gap closed']


class PairError(ValueError):
  """A run that cannot be compared, with what to do."""


def exact_bpd(workdir, num):
  """-log2 p(x) / D of the first `num` bpd points of a toy run under its exact density; None for other data."""
  from score_sde import datasets, toy
  from score_sde.runner import checkpoints, evaluate
  config = checkpoints.load_config(workdir)
  if datasets.spec(config).is_image or config.data.centered or config.data.dataset not in toy.TOY_DISTRIBUTIONS:
    return None
  points = np.concatenate([b['image'] for b in evaluate.bpd_batches(config, datasets.get_dataset(config))])[:num]
  log_p = np.asarray(toy.get_toy_distribution(config.data.dataset).log_prob(points), np.float64)
  return -log_p / (points.shape[1] * np.log(2))


def run_values(workdir, eval_folder):
  """{'step', 'fid': (mean, stderr), 'bpd': per-image array, 'bound': per-image array} of one evaluated run."""
  from score_sde.runner import evaluate
  workdir = os.path.join(REPO, workdir)  # relative paths are from the repository root, as run.py's
  entry = results.mode_results('eval', workdir, eval_folder)
  if entry is None:
    raise PairError(f'{workdir} has no {eval_folder}/{results.RESULT_FILES["eval"]}; run --mode eval on it first.')
  found = {name: evaluate.per_example_values(workdir, entry['step'], name, eval_folder) for name in FIGURES}
  if all(v is None for v in found.values()):
    raise PairError(f'{workdir}/{eval_folder} kept no bpd rounds; evaluate with eval.enable_bpd=True.')
  return {'step': entry['step'], 'fid': results.metric(entry, 'fid'), **found}


def mean_stderr(values):
  return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


def compare(label, baseline_dir, other_dir, eval_folder='eval'):
  """Table rows (results.markdown_table's layout) of one pair."""
  base, other = run_values(baseline_dir, eval_folder), run_values(other_dir, eval_folder)
  rows = []
  for name, figure in FIGURES.items():
    a, b = base[name], other[name]
    if a is None or b is None:
      continue
    if len(a) != len(b):
      raise PairError(f'{baseline_dir} and {other_dir} evaluated {len(a)} and {len(b)} images; evaluate both with '
                      'the same eval settings.')
    difference = mean_stderr(b - a)
    metrics = {'baseline': mean_stderr(a), 'other': mean_stderr(b), 'other - baseline': difference,
               'z (paired)': (round(difference[0] / difference[1], 1) if difference[1] > 0 else None, None)}
    exact = exact_bpd(os.path.join(REPO, baseline_dir), len(a))
    if exact is not None:
      gap_a, gap_b = mean_stderr(a - exact), mean_stderr(b - exact)
      metrics.update({'exact': mean_stderr(exact), 'baseline gap': gap_a, 'other gap': gap_b,
                      'share of gap closed': (round(1 - gap_b[0] / gap_a[0], 3), None)})
    rows.append({'name': label, 'params': {'figure': figure}, 'status': 'ok', 'metrics': metrics})
  rows.append({'name': label, 'params': {'figure': 'Fréchet distance'}, 'status': 'ok',
               'metrics': {'baseline': base['fid'], 'other': other['fid']}})
  return rows


def sweep_pairs(path, key, out=None):
  """[(label, baseline workdir, other workdir)] of a sweep's trials that differ only in grid key `key`."""
  spec = sweep.load_sweep(path)
  key = key.removeprefix('config.')
  if key not in spec['grid']:
    raise PairError(f'--pair_key {key} is not a grid key of {path}; its grid keys: {list(spec["grid"])}')
  out = os.path.abspath(out or REPO / 'runs' / 'sweeps' / spec['name'])
  trials = sweep.expand(spec)
  baseline_value = spec['grid'][key][0]
  pairs = []
  for name, params in trials:
    if params[key] == baseline_value:
      continue
    rest = {k: v for k, v in params.items() if k != key}
    base = next(n for n, p in trials if p[key] == baseline_value and {k: v for k, v in p.items() if k != key} == rest)
    label = ' '.join(f'{results.short_names([k])[k]}={v}' for k, v in rest.items()) or spec['name']
    label += f' ({results.short_names([key])[key]} {baseline_value} → {params[key]})'
    pairs.append((label, sweep.location(spec, base, out)[0], sweep.location(spec, name, out)[0],
                  sweep.location(spec, name, out)[1]))
  return pairs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument('--pair', nargs=2, action='append', default=[], metavar=('BASELINE', 'OTHER'),
                      help='two evaluated workdirs (repeat for several pairs)')
  parser.add_argument('--sweep', help='a sweep file whose trials to pair (with --pair_key)')
  parser.add_argument('--pair_key', help='the grid key whose values are compared; its first value is the baseline')
  parser.add_argument('--sweep_out', help="the sweep's results folder (default runs/sweeps/<sweep name>)")
  parser.add_argument('--eval_folder', default='eval', help='the --eval_folder of --pair runs')
  parser.add_argument('--out', default=str(REPO / 'runs' / 'likelihood_pairs'), help='where the table goes')
  args = parser.parse_args(argv)
  try:
    if bool(args.sweep) != bool(args.pair_key):
      raise PairError('give --sweep and --pair_key together')
    if not args.pair and not args.sweep:
      raise PairError('give --pair BASELINE OTHER, or --sweep with --pair_key')
    pairs = [(f'{sweep.display_path(a)} → {sweep.display_path(b)}', sweep.display_path(a), sweep.display_path(b),
              args.eval_folder) for a, b in args.pair]
    if args.sweep:
      pairs += sweep_pairs(args.sweep, args.pair_key, args.sweep_out)
    rows = [row for label, a, b, folder in pairs for row in compare(label, a, b, folder)]
  except (ValueError, OSError) as error:  # PairError, SweepError, a missing or unreadable run
    print(f'error: {error}', file=sys.stderr)
    return 2
  columns = [c for c in COLUMNS if any(row['metrics'].get(c) for row in rows)]
  os.makedirs(args.out, exist_ok=True)
  results.write_csv(os.path.join(args.out, 'pairs.csv'), rows, ['figure'], columns, name_column='pair')
  results.write_markdown(os.path.join(args.out, 'pairs.md'), rows, ['figure'], columns,
                         'Paired likelihood comparison', name_column='pair')
  print(results.markdown_table(rows, ['figure'], columns, name_column='pair'))
  print(f"Wrote {sweep.display_path(os.path.join(args.out, 'pairs.md'))} and pairs.csv")
  return 0


if __name__ == '__main__':
  sys.exit(main())
