"""Runs a grid of run.py trials one after another, then tabulates and plots their results.

  python experiments/sweep.py --sweep experiments/sweeps/toy_sdes.py [--out runs/sweeps/toy_sdes]
      [--print_commands] [--only_collect] [--config.<section>.<field>=<value> ...]

A sweep file's get_sweep() returns a dict (or ConfigDict) with
  config:    the base config file, relative to the repository root
  modes:     the run.py modes of a trial, in order: ['train', 'likelihood'], ['eval'], ...
  workdir:   optional, one trained run that every trial evaluates, each into its own --eval_folder
             (modes eval and sample only). Without it, each trial is a run of its own in <out>/<trial>.
  grid:      {override key: [values]}, expanded as a cartesian product (first key slowest)
  overrides: {override key: value} for every trial
  linked:    optional {grid key: {value: {override key: value}}}: overrides that come with one grid value
  metrics:   what to tabulate, looked up in the trial's results ('fid', 'kid', 'nfe', 'bpd', 'loss', 'fid.mean')
  plot:      optional {'x': grid key, 'y': metric, 'series': grid key, 'logx': bool}
Override keys are config paths without 'config.', e.g. 'sampling.snr'. Trailing --config.* flags go to every trial.

Each trial keeps status.json and logs/ in <out>/<trial>; the sweep writes <out>/results.csv, results.md and
plot.png. A trial whose metrics are all there already (from the same overrides) is skipped, so a killed sweep
resumes; a failed trial is recorded with the last line of its stderr and the sweep goes on.
--print_commands prints one shell line per trial (for a cluster scheduler) and runs nothing; --only_collect
just rebuilds the table and plot. Exit codes: 0 all trials ok, 1 some trial failed, 2 a bad sweep or argument.
"""
import argparse
import itertools
import json
import os
import pathlib
import re
import runpy
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results
from score_sde import config_table

RUN_PY = 'run.py'  # run from the repository root
FIELDS = ('name', 'config', 'modes', 'workdir', 'grid', 'overrides', 'linked', 'metrics', 'plot')


class SweepError(ValueError):
  """A sweep file that cannot run, with what to change."""


def _key(key):
  return key.removeprefix('config.')


def load_sweep(path):
  """The sweep dict of a sweep file, with defaults filled in and checked."""
  if not os.path.exists(path):
    raise SweepError(f'no sweep file {path}')
  get_sweep = runpy.run_path(str(path)).get('get_sweep')
  if get_sweep is None:
    raise SweepError(f'{path} has no get_sweep()')
  return check_sweep(get_sweep(), name=pathlib.Path(path).stem)


def check_sweep(sweep, name='sweep'):
  """A sweep dict with every field filled in; SweepError names the first problem."""
  sweep = dict(sweep.to_dict() if hasattr(sweep, 'to_dict') else sweep)
  unknown = sorted(set(sweep) - set(FIELDS))
  if unknown:
    raise SweepError(f'unknown sweep field(s) {unknown}; known: {list(FIELDS)}')
  for field in ('config', 'modes'):
    if field not in sweep:
      raise SweepError(f'the sweep needs `{field}`')
  sweep = {'name': name, 'workdir': None, 'grid': {}, 'overrides': {}, 'linked': {}, 'metrics': [], 'plot': None,
           **sweep}
  sweep['grid'] = {_key(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in sweep['grid'].items()}
  sweep['overrides'] = {_key(k): v for k, v in sweep['overrides'].items()}
  sweep['linked'] = {_key(k): {v: {_key(kk): vv for kk, vv in o.items()} for v, o in by_value.items()}
                     for k, by_value in sweep['linked'].items()}
  sweep['modes'], sweep['metrics'] = list(sweep['modes']), list(sweep['metrics'])
  config_file, _ = config_table.split_path(sweep['config'])
  if not os.path.exists(REPO / config_file):
    raise SweepError(f"no config file {config_file} (paths are relative to {REPO})")
  from score_sde.runner.modes import MODES
  bad = [m for m in sweep['modes'] if m not in MODES]
  if bad or not sweep['modes']:
    raise SweepError(f'modes must be a non-empty list of {MODES.names()}; got {sweep["modes"]}')
  if sweep['workdir'] and set(sweep['modes']) & {'train', 'likelihood'}:
    raise SweepError('with a shared workdir the modes can only be eval and sample (train and likelihood would '
                     'all write into that one run)')
  for key, values in sweep['grid'].items():
    if not isinstance(values, list) or not values:
      raise SweepError(f'grid key {key} needs a non-empty list of values, not {values!r}')
  for key in sweep['linked']:
    if key not in sweep['grid']:
      raise SweepError(f'linked key {key} is not a grid key')
  plot = sweep['plot']
  if plot:
    plot = sweep['plot'] = dict(plot)
    for field in ('x', 'series'):
      if plot.get(field) is not None:
        plot[field] = _key(plot[field])
        if plot[field] not in sweep['grid']:
          raise SweepError(f'plot {field}={plot[field]} is not a grid key')
    if plot.get('x') is None or plot.get('y') not in sweep['metrics']:
      raise SweepError('plot needs x (a grid key) and y (one of the metrics)')
  return sweep


def cli_value(value):
  """How run.py's --config.a.b=<value> spells a Python value."""
  if isinstance(value, (list, tuple)):
    return str(tuple(value))
  return repr(value) if isinstance(value, float) else str(value)


def _safe(text):
  return re.sub(r'[^A-Za-z0-9.+-]+', '_', text).strip('_')


def trial_name(params):
  """A filesystem-safe name from the grid values: 'snr-0.08_num_scales-100'."""
  short = results.short_names(list(params))
  return '_'.join(f'{short[k]}-{_safe(cli_value(v))}' for k, v in params.items()).strip('.') or 'base'


def expand(sweep):
  """[(trial name, {grid key: value})] over the grid's cartesian product."""
  keys = list(sweep['grid'])
  trials = [(trial_name(dict(zip(keys, values))), dict(zip(keys, values)))
            for values in itertools.product(*sweep['grid'].values())]
  names = [name for name, _ in trials]
  clash = sorted({n for n in names if names.count(n) > 1})
  if clash:
    raise SweepError(f'two trials would be named {clash[0]}; use grid values that differ in letters or digits')
  return trials


def override_flags(sweep, params, extra=()):
  """--config.* flags of one trial: fixed overrides, grid values, linked overrides, then the command line's."""
  overrides = {**sweep['overrides'], **params}
  for key, value in params.items():
    overrides.update(sweep['linked'].get(key, {}).get(value, {}))
  return [f'--config.{k}={cli_value(v)}' for k, v in overrides.items()] + list(extra)


def display_path(path):
  """A path as run.py sees it from the repository root: relative when inside the repository."""
  path = os.path.abspath(path)
  return os.path.relpath(path, REPO) if path.startswith(str(REPO) + os.sep) else path


def location(sweep, name, out):
  """(run.py workdir, eval folder) of a trial."""
  if sweep['workdir']:
    return sweep['workdir'], f"eval_{sweep['name']}_{name}"
  return display_path(os.path.join(out, name)), 'eval'


def commands(sweep, name, params, out, extra=()):
  """The run.py argv of each mode of one trial, to run from the repository root."""
  workdir, eval_folder = location(sweep, name, out)
  args = ['--config', sweep['config'], '--workdir', workdir]
  if sweep['workdir']:
    args += ['--eval_folder', eval_folder]
  flags = override_flags(sweep, params, extra)
  return [[sys.executable, RUN_PY, *args, '--mode', mode, *flags] for mode in sweep['modes']]


def check_trials(sweep, trials, out, extra):
  """run.py --check on the first mode of every trial; prints one line each; 2 if any trial would not start."""
  worst = 0
  for name, params in trials:
    argv = commands(sweep, name, params, out, extra)[0] + ['--check']
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    print(f'{name}: ' + (done.stdout.strip() or (done.stderr.strip().splitlines() or ['no output'])[-1]), flush=True)
    worst = max(worst, done.returncode)
  return worst


def shell_line(argvs):
  return f'cd {shlex.quote(str(REPO))} && ' + ' && '.join(shlex.join(argv) for argv in argvs)


def trial_results(sweep, name, out):
  """The trial's results over its modes, later modes winning; None when no mode has written any."""
  workdir, eval_folder = location(sweep, name, out)
  merged = {}
  for mode in sweep['modes']:
    merged.update(results.mode_results(mode, os.path.join(REPO, workdir), eval_folder) or {})
  return merged or None


def _read_status(sweep, name, out):
  try:
    with open(os.path.join(out, name, 'status.json')) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def is_complete(sweep, name, params, out, extra=()):
  """Whether the trial's last mode has written every metric, under the same overrides (when recorded)."""
  status = _read_status(sweep, name, out)
  if status is not None and status.get('flags') != override_flags(sweep, params, extra):
    return False
  last = sweep['modes'][-1]
  if last == 'train':  # metrics.jsonl does not say the run finished; a finished run resumes in seconds
    return False
  workdir, eval_folder = location(sweep, name, out)
  result = results.mode_results(last, os.path.join(REPO, workdir), eval_folder)
  return result is not None and all(results.metric(result, m)[0] is not None for m in sweep['metrics'])


def last_line(path):
  with open(path, errors='replace') as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def run_trial(sweep, name, params, out, extra=()):
  """Runs the trial's modes in order, stopping at the first failure; writes and returns its status."""
  logs = os.path.join(out, name, 'logs')
  os.makedirs(logs, exist_ok=True)
  argvs = commands(sweep, name, params, out, extra)
  status = {'trial': name, 'params': params, 'flags': override_flags(sweep, params, extra),
            'command': shell_line(argvs), 'status': 'ok', 'seconds': {}}
  for mode, argv in zip(sweep['modes'], argvs):
    start = time.time()
    err = os.path.join(logs, f'{mode}.err')
    with open(os.path.join(logs, f'{mode}.out'), 'w') as stdout, open(err, 'w') as stderr:
      code = subprocess.run(argv, check=False, cwd=REPO, stdout=stdout, stderr=stderr).returncode
    status['seconds'][mode] = round(time.time() - start, 1)
    if code != 0:
      status.update(status='failed', mode=mode, returncode=code, error=last_line(err))
      break
  with open(os.path.join(out, name, 'status.json'), 'w') as f:
    json.dump(status, f, indent=2)
  return status


def collect(sweep, trials, out):
  """One row per trial: its grid values, metrics (mean, stderr) and status ('ok', 'failed' or 'not run')."""
  rows = []
  for name, params in trials:
    status = _read_status(sweep, name, out) or {}
    result = trial_results(sweep, name, out)
    state = status.get('status') or ('ok' if result else 'not run')
    rows.append({**{k: status[k] for k in ('mode', 'returncode', 'error') if k in status},
                 'name': name, 'params': params, 'status': state,
                 'metrics': {m: results.metric(result, m) for m in sweep['metrics']}})
  return rows


def write_outputs(sweep, rows, out):
  os.makedirs(out, exist_ok=True)
  keys, metrics = list(sweep['grid']), sweep['metrics']
  results.write_csv(os.path.join(out, 'results.csv'), rows, keys, metrics)
  title = f"Sweep {sweep['name']}: {sweep['config']}, modes {' → '.join(sweep['modes'])}"
  results.write_markdown(os.path.join(out, 'results.md'), rows, keys, metrics, title)
  if sweep['plot']:
    p = sweep['plot']
    results.plot(os.path.join(out, 'plot.png'), rows, p['x'], p['y'], p.get('series'), title=sweep['name'],
                 logx=p.get('logx', False))
  return results.markdown_table(rows, keys, metrics)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  extra = [a for a in argv if a.startswith('--config.')]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument('--sweep', required=True, help='a sweep file with get_sweep()')
  parser.add_argument('--out', help='results folder (default: runs/sweeps/<sweep name>)')
  parser.add_argument('--print_commands', action='store_true', help='print one shell line per trial, run nothing')
  parser.add_argument('--only_collect', action='store_true', help='only rebuild the table and plot')
  parser.add_argument('--check', action='store_true',
                      help="run.py --check on each trial's first mode (the later ones need its output): what each "
                           'trial would do, nothing written')
  args = parser.parse_args([a for a in argv if not a.startswith('--config.')])
  try:
    sweep = load_sweep(args.sweep)
    trials = expand(sweep)
    if sweep['workdir'] and not (args.print_commands or args.only_collect or args.check) and not os.path.isdir(
        REPO / sweep['workdir']):
      raise SweepError(f"the shared workdir {sweep['workdir']} does not exist; train it first")
  except (SweepError, SyntaxError, ImportError, TypeError, AttributeError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  out = os.path.abspath(args.out or REPO / 'runs' / 'sweeps' / sweep['name'])

  if args.print_commands:
    for name, params in trials:
      print(shell_line(commands(sweep, name, params, out, extra)))
    return 0
  if args.check:
    return check_trials(sweep, trials, out, extra)
  if not args.only_collect:
    for i, (name, params) in enumerate(trials, 1):
      prefix = f'[{i}/{len(trials)}] {name}:'
      if is_complete(sweep, name, params, out, extra):
        print(f'{prefix} results exist, skipped', flush=True)
        continue
      print(f"{prefix} {' → '.join(sweep['modes'])} ...", flush=True)
      status = run_trial(sweep, name, params, out, extra)
      took = sum(status['seconds'].values())
      print(f"{prefix} {results.status_text(status)} ({took:.0f} s; logs in "
            f"{display_path(os.path.join(out, name, 'logs'))})", flush=True)
  rows = collect(sweep, trials, out)
  print(write_outputs(sweep, rows, out))
  print(f"Wrote {display_path(os.path.join(out, 'results.md'))}, results.csv" + (', plot.png' if sweep['plot'] else ''))
  return 1 if any(row['status'] == 'failed' for row in rows) else 0


if __name__ == '__main__':
  sys.exit(main())
