"""Maximum-likelihood training of the quickstart: the default DSM loss against likelihood weighting with
importance-sampled time (training.likelihood_weighting + training.importance_weighting, score_flow), same steps
(1,500) and seed. Each trial trains, then evaluates its final checkpoint: the ODE bpd and the bound of the 128
held-out digits, and the digits-classifier Fréchet distance, KID and IS of 256 samples.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_mle.py
  python experiments/likelihood_pairs.py --sweep experiments/sweeps/quickstart_mle.py --pair_key training.likelihood_weighting

The second command pairs the two trials digit by digit, over the same dequantization draws (docs/likelihood.md).
"""


def get_sweep():
  return {
      'config': 'configs/quickstart.py',
      'modes': ['train', 'eval'],
      'grid': {'training.likelihood_weighting': [False, True]},
      'linked': {'training.likelihood_weighting': {True: {'training.importance_weighting': True}}},
      'overrides': {'eval.bpd_method': 'both'},
      'metrics': ['bpd', 'bound', 'fid', 'kid', 'inception_score'],
  }
