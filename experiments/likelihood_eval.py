"""Bits/dim of trained runs: run.py --mode likelihood on each workdir in turn, then one table.

  python experiments/likelihood_eval.py --workdir runs/quickstart --workdir runs/gmm [--config <file.py> ...]
      [--out runs/likelihood_eval] [--only_collect] [--config.eval.likelihood_rtol=1e-3 ...]
      [--config.eval.bpd_method=both] [--config.eval.dequantization_samples=4]

The table has, per workdir, the ODE bpd and the bound (eval.bpd_method), each ± standard error, the score
evaluations and seconds per image of each, and the dequantization used.

Without --config, a run is evaluated under the config it was trained with (<workdir>/config.json, through
experiments/workdir_config.py). Give --config once for all workdirs, or once per workdir in the same order.
--config.* flags pass through to run.py. Each run writes <workdir>/likelihood.json (replacing an older one);
this script prints the table and writes <out>/likelihood.md and likelihood.csv. A failed run is recorded
with the last line of its stderr and the others still run. Exit codes: 0 ok, 1 some run failed, 2 bad arguments.
"""
import argparse
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results, sweep
from experiments.trial import last_line

# likelihood.json: 'bpd' the probability-flow ODE's bits/dim, 'bound' the score_flow bound (each mean ± stderr, when
# eval.bpd_method computed it), score evaluations and seconds per image of each, the dequantization behind them.
METRICS = ['bpd', 'bound', 'bpd_nfe', 'bound_nfe', 'bpd_seconds_per_image', 'bound_seconds_per_image',
           'dequantization', 'num_examples', 'step', 'dataset']


def command(workdir, config, overrides):
  """run.py argv (from the repository root) for the bpd of one workdir."""
  config = config or f'experiments/workdir_config.py:{workdir}'
  return [sys.executable, sweep.RUN_PY, '--config', config, '--workdir', workdir, '--mode', 'likelihood', *overrides]


def evaluate(workdir, config, overrides, out):
  """Runs one likelihood evaluation; its row for the table."""
  name = workdir.replace(os.sep, '_').strip('._') or 'run'
  err = os.path.join(out, 'logs', f'{name}.err')
  os.makedirs(os.path.dirname(err), exist_ok=True)
  with open(os.path.join(out, 'logs', f'{name}.out'), 'w') as stdout, open(err, 'w') as stderr:
    argv = command(workdir, config, overrides)
    code = subprocess.run(argv, check=False, cwd=REPO, stdout=stdout, stderr=stderr).returncode
  if code != 0:
    return {'status': 'failed', 'mode': 'likelihood', 'returncode': code, 'error': last_line(err)}
  return {'status': 'ok'}


def check(workdirs, configs, overrides):
  """run.py --check for each workdir, its line printed; 2 if any would not run."""
  worst = 0
  for workdir, config in zip(workdirs, configs):
    done = subprocess.run(command(sweep.display_path(workdir), config, overrides) + ['--check'], cwd=REPO,
                          capture_output=True, text=True, check=False)
    print(f'{workdir}: ' + (done.stdout.strip() or done.stderr.strip().splitlines()[-1]), flush=True)
    worst = max(worst, done.returncode)
  return worst


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument('--workdir', action='append', required=True, help='a trained run (repeat for several)')
  parser.add_argument('--config', action='append', default=[], help='config file: once, or once per workdir')
  parser.add_argument('--out', default=str(REPO / 'runs' / 'likelihood_eval'), help='where the table goes')
  parser.add_argument('--only_collect', action='store_true', help='tabulate existing likelihood.json files')
  parser.add_argument('--check', action='store_true',
                      help='run.py --check for each workdir: say what each run would do, write nothing')
  args = parser.parse_args([a for a in argv if not a.startswith('--config.')])
  if len(args.config) not in (0, 1, len(args.workdir)):
    print(f'error: give --config once or once per --workdir ({len(args.workdir)}), not {len(args.config)} times',
          file=sys.stderr)
    return 2
  configs = args.config * len(args.workdir) if len(args.config) == 1 else args.config or [None] * len(args.workdir)
  if args.check:
    return check(args.workdir, configs, overrides)
  out = os.path.abspath(args.out)
  rows = []
  for i, (workdir, config) in enumerate(zip(args.workdir, configs), 1):
    workdir = sweep.display_path(workdir)
    config = config and sweep.display_path(config)
    status = {'status': 'ok'}
    if not args.only_collect:
      print(f'[{i}/{len(args.workdir)}] {workdir}: likelihood ...', flush=True)
      status = evaluate(workdir, config, overrides, out)
    result = results.mode_results('likelihood', os.path.join(REPO, workdir))
    if status['status'] == 'ok' and result is None:
      status = {'status': 'not run'}
    rows.append({**status, 'name': workdir, 'params': {},
                 'metrics': {m: results.metric(result, m) for m in METRICS}})
  os.makedirs(out, exist_ok=True)
  results.write_csv(os.path.join(out, 'likelihood.csv'), rows, [], METRICS, name_column='workdir')
  title = 'Bits/dim' + (f" ({' '.join(overrides)})" if overrides else '')
  results.write_markdown(os.path.join(out, 'likelihood.md'), rows, [], METRICS, title, name_column='workdir')
  print(results.markdown_table(rows, [], METRICS, name_column='workdir'))
  print(f"Wrote {sweep.display_path(os.path.join(out, 'likelihood.md'))} and likelihood.csv")
  return 1 if any(row['status'] == 'failed' for row in rows) else 0


if __name__ == '__main__':
  sys.exit(main())
