"""Fréchet distance against score evaluations, one line per sampler family, from the quickstart_nfe sweep's CSV.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_nfe.py
  python experiments/plot_quickstart_nfe.py [--csv runs/sweeps/quickstart_nfe/results.csv] [--out docs/sweep_quickstart_nfe.png]
"""
import argparse
import pathlib
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results  # noqa: E402

FAMILIES = {'pc': 'PC (reverse diffusion)', 'ode': 'probability-flow ODE (RK45)', 'ddim': 'DDIM',
            'dpm2m': 'DPM-Solver++ 2M', 'dpm3m': 'DPM-Solver++ 3M', 'edm': 'EDM Heun'}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--csv', default='runs/sweeps/quickstart_nfe/results.csv')
  parser.add_argument('--out', default='docs/sweep_quickstart_nfe.png')
  args = parser.parse_args()
  rows = results.ok_rows(args.csv, 'experiments/sweeps/quickstart_nfe.py')
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in FAMILIES.items():
    points = sorted((float(r['nfe']), float(r['fid']), float(r['fid_stderr'])) for r in rows
                    if r['sampling.method'].split('_')[0] == key)
    if points:
      nfe, fid, err = zip(*points)
      ax.errorbar(nfe, fid, yerr=err, marker='o', capsize=3, label=label)
  ax.set_xscale('log')
  results.save_figure(fig, ax, args.out, xlabel='score evaluations per sample (NFE)',
                      ylabel='digits-classifier Fréchet distance', title='quickstart: 1,000 samples per setting',
                      legend=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
