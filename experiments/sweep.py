"""Runs a grid of run.py trials, here or on a cluster, then tabulates and plots their results.

  python experiments/sweep.py --sweep experiments/sweeps/toy_sdes.py [--out runs/sweeps/toy_sdes]
      [--launcher serial|print|local|slurm] [--launcher_config launchers/<name>.py] [--max_parallel N]
      [--only_collect] [--config.<section>.<field>=<value> ...]

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

Each trial has a fixed workdir, <out>/<trial> (or its --eval_folder of the shared workdir), and keeps
status.json and logs/ in <out>/<trial> (experiments/trial.py); the sweep writes <out>/results.csv, results.md and
plot.png, whatever the launcher. A trial whose metrics are all there already (from the same overrides) is skipped,
so a killed sweep resumes; a failed trial is recorded with the last line of its stderr and the sweep goes on.
The launchers (experiments/launchers.py): serial (the default) runs the trials one after another here; print
(--print_commands) prints one shell line per trial and runs nothing; local and slurm go through submitit, whose
pre-emption and time-limit signal a trial passes on to run.py, which saves and is requeued. --only_collect just
rebuilds the table and plot. Exit codes: 0 all trials ok (or submitted), 1 some trial failed or was pre-empted
(running the sweep again resumes it), 2 a bad sweep, launcher config or argument.
"""
import argparse
import itertools
import os
import pathlib
import re
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import launchers, results, settings_file
from experiments.trial import Trial, read_status
from score_sde import config_table

RUN_PY = 'run.py'  # run from the repository root
FIELDS = ('name', 'config', 'modes', 'workdir', 'grid', 'overrides', 'linked', 'metrics', 'plot')


class SweepError(ValueError):
  """A sweep file that cannot run, with what to change."""


def _key(key):
  return key.removeprefix('config.')


def load_sweep(path):
  """The sweep dict of a sweep file, with defaults filled in and checked."""
  get_sweep = settings_file.function_of(path, 'get_sweep', 'sweep file', SweepError)
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


def is_complete(sweep, name, params, out, extra=()):
  """Whether the trial's last mode has written every metric, under the same overrides (when recorded)."""
  status = read_status(os.path.join(out, name))
  if status is not None and status.get('flags') != override_flags(sweep, params, extra):
    return False
  last = sweep['modes'][-1]
  if last == 'train':  # metrics.jsonl does not say the run finished; a finished run resumes in seconds
    return False
  workdir, eval_folder = location(sweep, name, out)
  result = results.mode_results(last, os.path.join(REPO, workdir), eval_folder)
  return result is not None and all(results.metric(result, m)[0] is not None for m in sweep['metrics'])


def make_trial(sweep, name, params, out, extra=()):
  """The trial's modes in order, stopping at the first failure, as a callable that writes and returns its status."""
  argvs = commands(sweep, name, params, out, extra)
  return Trial(name, params, override_flags(sweep, params, extra), os.path.join(out, name), sweep['modes'], argvs,
               REPO, command=shell_line(argvs))


def collect(sweep, trials, out):
  """One row per trial: its grid values, metrics (mean, stderr) and status ('ok', 'failed' or 'not run')."""
  rows = []
  for name, params in trials:
    status = read_status(os.path.join(out, name)) or {}
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
  parser.add_argument('--launcher', default='serial',
                      help=f"how trials run: {' | '.join(launchers.LAUNCHERS.names())} (experiments/launchers.py)")
  parser.add_argument('--launcher_config', help='launchers/<name>.py: submitit parameters for --launcher local or '
                      'slurm (fields in launchers/slurm_example.py)')
  parser.add_argument('--max_parallel', type=int,
                      help='local: trials running at once (default 1); slurm: array tasks running at once')
  parser.add_argument('--print_commands', action='store_true', help='the same as --launcher print')
  parser.add_argument('--only_collect', action='store_true', help='only rebuild the table and plot')
  parser.add_argument('--check', action='store_true',
                      help="run.py --check on each trial's first mode (the later ones need its output): what each "
                           'trial would do, nothing written')
  args = parser.parse_args([a for a in argv if not a.startswith('--config.')])
  try:
    sweep = load_sweep(args.sweep)
    trials = expand(sweep)
    launcher = _launcher(args)
    config = launchers.load_config(args.launcher_config) if args.launcher_config else {}
    if sweep['workdir'] and launcher != 'print' and not (args.only_collect or args.check) and not os.path.isdir(
        REPO / sweep['workdir']):
      raise SweepError(f"the shared workdir {sweep['workdir']} does not exist; train it first")
  except (ValueError, SyntaxError, ImportError, TypeError, AttributeError) as error:  # SweepError, LaunchError too
    print(f'error: {error}', file=sys.stderr)
    return 2
  out = os.path.abspath(args.out or REPO / 'runs' / 'sweeps' / sweep['name'])
  options = launchers.Options(REPO, out, config, args.max_parallel)

  if args.check:
    return check_trials(sweep, trials, out, extra)
  if launcher == 'print' or not args.only_collect:
    todo = []
    for i, (name, params) in enumerate(trials, 1):
      prefix = f'[{i}/{len(trials)}] {name}:'
      waiting = _still_queued(options, name) if launcher == 'slurm' else None
      if launcher != 'print' and is_complete(sweep, name, params, out, extra):
        print(f'{prefix} results exist, skipped', flush=True)
      elif waiting:
        print(f'{prefix} {waiting}, left alone', flush=True)
      else:
        todo.append((prefix, make_trial(sweep, name, params, out, extra)))
    try:
      for event, prefix, detail in launchers.LAUNCHERS.get(launcher)(todo, options):
        print(detail if event == 'line' else f'{prefix} {_event_text(event, detail, out)}', flush=True)
    except launchers.LaunchError as error:
      print(f'error: {error}', file=sys.stderr)
      return 2
    if launcher == 'print':
      return 0
    if launcher == 'slurm' and todo:
      print(f'Submitted {len(todo)} trial(s) to SLURM (job folder {display_path(options.jobs_folder)}); run the same '
            'command again to collect their results.', flush=True)
  rows = collect(sweep, trials, out)
  print(write_outputs(sweep, rows, out))
  print(f"Wrote {display_path(os.path.join(out, 'results.md'))}, results.csv" + (', plot.png' if sweep['plot'] else ''))
  return 1 if any(row['status'] in ('failed', 'preempted') for row in rows) else 0


def _launcher(args):
  """--launcher, with --print_commands as another name for --launcher print; one line if they disagree."""
  if args.print_commands and args.launcher not in ('serial', 'print'):
    raise SweepError(f'--print_commands is --launcher print; it does not go with --launcher {args.launcher}')
  launcher = 'print' if args.print_commands else args.launcher.lower()
  launchers.LAUNCHERS.get(launcher)  # an unknown name: one line with the known ones
  if args.launcher_config and launcher not in ('local', 'slurm'):
    raise SweepError(f'--launcher_config is for --launcher local or slurm, not {launcher}')
  if args.max_parallel is not None and args.max_parallel < 1:
    raise SweepError(f'--max_parallel={args.max_parallel} must be at least 1')
  return launcher


def _still_queued(options, name):
  """'still RUNNING (SLURM job 123_4)' for a trial submitted earlier whose job has not ended, else None."""
  status = read_status(os.path.join(options.out, name)) or {}
  if status.get('status') not in ('submitted', 'running', 'requeued', 'preempted') or not status.get('job_id'):
    return None
  try:
    state = launchers.slurm_job_state(options, status['job_id'])
  except Exception as error:  # no sacct here: better to leave a trial alone than to run it twice
    state = f'UNKNOWN ({type(error).__name__})'
  return f"still {state} (SLURM job {status['job_id']})" if state.split()[0] in launchers.ALIVE else None


def _event_text(event, detail, out):
  if event == 'started':
    return detail
  if event == 'submitted':
    return f"submitted as SLURM job {detail['job_id']}"
  took = sum(detail['seconds'].values())
  return (f"{results.status_text(detail)} ({took:.0f} s; logs in "
          f"{display_path(os.path.join(out, detail['trial'], 'logs'))})")


if __name__ == '__main__':
  sys.exit(main())
