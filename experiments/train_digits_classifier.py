"""Trains the digits classifier whose features give the "digits-classifier FD" (not Inception FID).

Writes the weights that ship as score_sde/assets/digits_classifier.npz and prints held-out accuracy
(on order[:297] of default_rng(0).permutation(1797), datasets.digits_split()).

  python experiments/train_digits_classifier.py [--out score_sde/assets/digits_classifier.npz] [--seed 0]
"""
import argparse
import time

from score_sde import datasets
from score_sde.metrics import digits_classifier


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=str(digits_classifier.WEIGHTS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=1000)
  args = parser.parse_args()
  start = time.perf_counter()
  split = datasets.digits_split()
  variables, acc = digits_classifier.train(split, seed=args.seed, steps=args.steps)
  digits_classifier.save(variables, args.out)
  print(f'held-out accuracy {acc:.4f} ({len(split[2])} images), '
        f'trained in {time.perf_counter() - start:.1f} s, wrote {args.out}')


if __name__ == '__main__':
  main()
