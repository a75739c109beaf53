"""Reading what run.py modes leave in a workdir, and writing it as CSV, Markdown and a plot."""
import csv
import json
import math
import os
import sys

RESULT_FILES = {'train': 'metrics.jsonl', 'likelihood': 'likelihood.json', 'eval': 'eval_results.json'}


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def mode_results(mode, workdir, eval_folder='eval'):
  """The flat dict of results one run.py mode wrote into `workdir`, or None if there is none yet.

  train: the latest value of every metric in metrics.jsonl; likelihood: likelihood.json;
  eval: the newest checkpoint's entry of <eval_folder>/eval_results.json; sample: nothing to tabulate.
  """
  if mode == 'train':
    path = os.path.join(workdir, RESULT_FILES['train'])
    if not os.path.exists(path):
      return None
    latest = {}
    with open(path) as f:
      for line in f:
        try:
          latest.update(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
          pass
    return latest or None
  if mode == 'likelihood':
    return _read_json(os.path.join(workdir, RESULT_FILES['likelihood']))
  if mode == 'eval':
    results = _read_json(os.path.join(workdir, eval_folder, RESULT_FILES['eval'])) or {}
    per_step = results.get('checkpoints') or {}
    return per_step[max(per_step, key=int)] if per_step else None
  return None


def metric(result, name):
  """(mean, stderr) of metric `name` in a result dict, or (None, None) if it is absent.

  Understands {'mean': .., 'stderr': ..} dicts (eval_results.json), plain values (nfe, loss), and
  <name>_mean / <name>_stderr pairs (likelihood.json's bpd). A dotted name walks into nested dicts.
  """
  if not isinstance(result, dict):
    return None, None
  value = result
  for part in name.split('.'):
    value = value.get(part) if isinstance(value, dict) else None
  if value is None and f'{name}_mean' in result:
    return result[f'{name}_mean'], result.get(f'{name}_stderr')
  if isinstance(value, dict):
    return value.get('mean'), value.get('stderr')
  return value, None


def short_names(keys):
  """{override key: the shortest readable column name}: the last field, or the whole key when that is ambiguous."""
  last = [k.split('.')[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _finite(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(mean, stderr=None):
  """'12.3 ± 0.41'; just the value when there is no standard error; '' when absent."""
  if mean is None:
    return ''
  if isinstance(mean, bool) or not isinstance(mean, (int, float)):
    return str(mean)
  text = str(mean) if isinstance(mean, int) else f'{mean:.4g}'
  return f'{text} ± {stderr:.2g}' if _finite(stderr) else text


def status_text(row):
  if row['status'] not in ('failed', 'preempted'):
    return row['status']
  return f"{row['status']} ({row.get('mode')}, exit {row.get('returncode')}): {row.get('error', '')}"


def write_csv(path, rows, keys, metrics, name_column='trial'):
  """One line per row: name, the grid values, each metric (and its stderr when it has one), status and error."""
  has_stderr = {m: any(row['metrics'].get(m, (None, None))[1] is not None for row in rows) for m in metrics}
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    columns = [c for m in metrics for c in ((m, f'{m}_stderr') if has_stderr[m] else (m,))]
    writer.writerow([name_column, *keys, *columns, 'status', 'error'])
    for row in rows:
      values = [v for m in metrics for v in row['metrics'].get(m, (None, None))[:1 + has_stderr[m]]]
      writer.writerow([row['name'], *[row['params'].get(k) for k in keys], *['' if v is None else v for v in values],
                       row['status'], row.get('error', '')])


def markdown_table(rows, keys, metrics, name_column='trial'):
  """A Markdown table, metrics as mean ± stderr."""
  short = short_names(keys)
  header = [name_column, *[short[k] for k in keys], *metrics, 'status']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    cells = [row['name'], *[str(row['params'].get(k, '')) for k in keys],
             *[fmt(*row['metrics'].get(m, (None, None))) for m in metrics], status_text(row)]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_markdown(path, rows, keys, metrics, title, name_column='trial'):
  with open(path, 'w') as f:
    f.write(f'# {title}\n\n' + markdown_table(rows, keys, metrics, name_column))


def plot(path, rows, x, y, series=None, title='', logx=False):
  """Metric `y` against grid key `x`, one line per value of grid key `series`, with stderr bars."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  xs = list(dict.fromkeys(row['params'][x] for row in rows))
  numeric = all(_finite(v) for v in xs)
  position = (lambda v: v) if numeric else {v: i for i, v in enumerate(xs)}.get
  done = [row for row in rows if _finite(row['metrics'].get(y, (None,))[0])]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  series_name = short_names([series])[series] if series else None
  for s in dict.fromkeys(row['params'][series] for row in rows) if series else [None]:
    points = sorted((position(row['params'][x]), *row['metrics'][y]) for row in done
                    if series is None or row['params'][series] == s)
    if not points:
      continue
    px, py, pe = zip(*points)
    errors = [e if _finite(e) else 0. for e in pe]
    ax.errorbar(px, py, yerr=errors if any(errors) else None, marker='o', capsize=3,
                linestyle='-' if numeric else 'none', label=None if series is None else f'{series_name}={s}')
  if not numeric:
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
  if logx and numeric:
    ax.set_xscale('log')
    ax.set_xticks(xs, [str(v) for v in xs])  # the grid's own values, not powers of ten
    ax.minorticks_off()
  if series and done:
    ax.legend()
  if not done:
    ax.text(0.5, 0.5, 'no results yet', ha='center', va='center', transform=ax.transAxes)
  save_figure(fig, ax, path, xlabel=x, ylabel=y, title=title, dpi=120)


def save_figure(fig, ax, path, xlabel, ylabel, title, legend=False, dpi=100):
  """Labels, a light grid (and the legend), then writes `path` and closes the figure: every plot here ends so."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if legend:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def ok_rows(csv_path, sweep_file):
  """The rows of a sweep's results.csv whose trials finished; one line and exit code 2 when there is no such file."""
  if not os.path.isfile(csv_path):
    print(f'error: {csv_path} does not exist; run the sweep first: python experiments/sweep.py --sweep {sweep_file}',
          file=sys.stderr)
    raise SystemExit(2)
  with open(csv_path) as f:
    return [row for row in csv.DictReader(f) if row['status'] == 'ok']
