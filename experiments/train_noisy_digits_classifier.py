"""Trains the noise-conditional digits classifier that guides class-conditional sampling on the quickstart.

Digits centred to [-1, 1] are noised by the quickstart SDE (VP, β ∈ [0.1, 20]) at t ~ U(1e-3, 1); the
classifier sees x(t) and σ(t). Writes score_sde/assets/noisy_digits_classifier.npz and prints the held-out
accuracy (order[:297] of default_rng(0).permutation(1797), as the clean digits classifier) at several t.

  python experiments/train_noisy_digits_classifier.py [--out score_sde/assets/noisy_digits_classifier.npz] [--seed 0]
"""
import argparse
import time

from score_sde import datasets
from score_sde.models import noisy_digits_classifier


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=str(noisy_digits_classifier.WEIGHTS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=3000)
  args = parser.parse_args()
  start = time.perf_counter()
  split = datasets.digits_split()
  variables, accuracy = noisy_digits_classifier.train(split, seed=args.seed, steps=args.steps)
  noisy_digits_classifier.save(variables, args.out)
  table = ', '.join(f't={t:g}: {a:.3f}' for t, a in accuracy.items())
  print(f'held-out accuracy ({len(split[2])} images) {table}; '
        f'trained in {time.perf_counter() - start:.1f} s, wrote {args.out}')


if __name__ == '__main__':
  main()
