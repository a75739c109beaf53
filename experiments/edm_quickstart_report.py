"""docs/edm.md's comparison: the EDM-trained and the VP-trained quickstart under the same samplers, from two sweeps.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_edm_nfe.py
  python experiments/sweep.py --sweep experiments/sweeps/quickstart_vp_nfe.py
  python experiments/edm_quickstart_report.py [--out docs/edm_quickstart_nfe.png]

Per sampler setting: each training's digits-classifier Fréchet distance ± the bootstrap stderr that --mode eval
reported, and EDM − VP with a paired bootstrap stderr (metrics.formulas.paired_fid_difference). Pairing is exact:
both evaluations use the seed, step and sampler of the same settings, so sample i of the two runs starts from the
same latent. Prints a Markdown table and writes the plot (FD against NFE, one line per training and sampler).
Exit codes: 0 ok, 2 a sweep not run yet.
"""
import argparse
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results, sweep  # noqa: E402

SWEEPS = {'EDM': 'experiments/sweeps/quickstart_edm_nfe.py', 'VP': 'experiments/sweeps/quickstart_vp_nfe.py'}
SAMPLERS = {'edm_heun': ('EDM Heun', 'sampling.num_steps', 'levels', 'C0'),   # method -> name, count, unit, colour
            'dpm_solver++': ('DPM-Solver++ 2M', 'sampling.num_steps', 'steps', 'C1')}
STYLES = {'EDM': ('-', 'o'), 'VP': ('--', 's')}  # training -> line, marker


class ReportError(ValueError):
  """A sweep whose evaluations are missing, with the command that makes them."""


def trained_run_results(path):
  """{setting label: {'fid': (mean, stderr), 'nfe', 'features' (n, d), 'overrides'}} of one sweep, and the
  reference features its FD is measured against."""
  from score_sde import datasets
  from score_sde.metrics import features
  from score_sde.runner import checkpoints, evaluate
  s = sweep.load_sweep(REPO / path)
  workdir = REPO / s['workdir']
  config = checkpoints.load_config(str(workdir))
  dataset = datasets.get_dataset(config)
  name = features.feature_extractor_name(config, dataset.is_image)
  reference = evaluate.reference_features(config, dataset, name, features.get_feature_fn(config, name))
  found = {}
  for trial, params in sweep.expand(s):
    _, eval_folder = sweep.location(s, trial, out=None)
    entry = results.mode_results('eval', str(workdir), eval_folder)
    if entry is None:
      raise ReportError(f'{s["workdir"]}/{eval_folder} has no results; run python experiments/sweep.py --sweep {path}')
    feats = evaluate.sample_features(str(workdir), entry['step'], eval_folder)
    if feats is None:
      raise ReportError(f'{s["workdir"]}/{eval_folder} kept no sampling rounds; rerun its sweep')
    label = params['sampling.method']
    found[label] = {'fid': results.metric(entry, 'fid'), 'nfe': int(entry['nfe']),
                    'features': feats[:s['overrides']['eval.num_samples']],
                    'overrides': s['linked']['sampling.method'][label]}
  return found, reference


def setting_name(overrides):
  name, count, unit, _ = SAMPLERS[overrides['sampling.method']]
  return f'{name}, {overrides[count]} {unit}'


def table(runs, reference):
  """Markdown rows: setting, NFE, FD of each training, EDM − VP (paired)."""
  from score_sde.metrics import formulas
  lines = ['| sampler | NFE | EDM training | VP training (DSM) | EDM − VP (paired) |', '|---|---|---|---|---|']
  for label, edm in runs['EDM'].items():
    vp = runs['VP'][label]
    diff = formulas.paired_fid_difference(edm['features'], vp['features'], reference)
    lines.append(f"| {setting_name(edm['overrides'])} | {edm['nfe']} | {edm['fid'][0]:.2f} ± {edm['fid'][1]:.2f} | "
                 f"{vp['fid'][0]:.2f} ± {vp['fid'][1]:.2f} | {diff['mean']:+.2f} ± {diff['stderr']:.2f} |")
  return '\n'.join(lines)


def plot(runs, out):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for training, found in runs.items():
    for method, (name, _, _, colour) in SAMPLERS.items():
      points = sorted((r['nfe'], *r['fid']) for r in found.values() if r['overrides']['sampling.method'] == method)
      nfe, fid, err = zip(*points)
      line, marker = STYLES[training]
      ax.errorbar(nfe, fid, yerr=err, marker=marker, capsize=3, linestyle=line, color=colour,
                  label=f'{training} training, {name}')
  ticks = sorted({r['nfe'] for found in runs.values() for r in found.values()})
  ax.set_xscale('log')
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.minorticks_off()
  results.save_figure(fig, ax, out, xlabel='score evaluations per sample (NFE)',
                      ylabel='digits-classifier Fréchet distance',
                      title='quickstart, 1,500 steps each: EDM vs VP training', legend=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='docs/edm_quickstart_nfe.png', help='the plot')
  args = parser.parse_args(argv)
  try:
    loaded = {training: trained_run_results(path) for training, path in SWEEPS.items()}
  except ReportError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  runs = {training: found for training, (found, _) in loaded.items()}
  print(table(runs, loaded['EDM'][1]))
  plot(runs, args.out)
  print(f'wrote {os.path.relpath(os.path.abspath(args.out), REPO)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
