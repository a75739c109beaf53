"""Fréchet distance against class error (100% - accuracy), one point per guidance scale γ, from the quickstart_cfg
sweep's CSV: one line guided everywhere, one guided on the interval only. Both axes are logarithmic; a setting with
no error in its samples is drawn at half of one sample's share (the resolution of the measurement).

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_cfg.py
  python experiments/plot_quickstart_cfg.py [--csv runs/sweeps/quickstart_cfg/results.csv] [--out docs/guidance_quickstart.png]
"""
import argparse
import pathlib
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from experiments import results  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--csv', default='runs/sweeps/quickstart_cfg/results.csv')
  parser.add_argument('--out', default='docs/guidance_quickstart.png')
  parser.add_argument('--num_samples', type=int, default=1000, help="the sweep's eval.num_samples")
  args = parser.parse_args()
  rows = results.ok_rows(args.csv, 'experiments/sweeps/quickstart_cfg.py')
  fig, ax = plt.subplots(figsize=(6, 4))
  for interval in dict.fromkeys(r['sampling.guidance_interval'] for r in rows):
    points = sorted((float(r['sampling.guidance_scale']), 100 * (1 - float(r['class_accuracy'])),
                     100 * float(r['class_accuracy_stderr']), float(r['fid']), float(r['fid_stderr']))
                    for r in rows if r['sampling.guidance_interval'] == interval)
    scale, error, error_err, fid, fid_err = zip(*points)
    floor = 50. / args.num_samples  # half of one sample, in %
    error = [max(e, floor) for e in error]
    label = f'guided on σ/α in ({interval.replace(",", ", ")}]' if interval else 'guided everywhere'
    line = ax.errorbar(error, fid, xerr=[min(e, x - floor / 2) for e, x in zip(error_err, error)], yerr=fid_err,
                       marker='o', capsize=3, label=label)
    for g, x, y in zip(scale, error, fid):
      ax.annotate(f'γ={g:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7,
                  color=line[0].get_color())
  ax.set_xscale('log')
  ax.set_yscale('log')
  for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_yticks([2, 3, 5, 10, 20, 50])
  results.save_figure(fig, ax, args.out, xlabel='class error of the samples, % (clean digits classifier; log)',
                      ylabel='digits-classifier Fréchet distance (log)',
                      title='quickstart_cond: 1,000 class-balanced samples per γ', legend=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
