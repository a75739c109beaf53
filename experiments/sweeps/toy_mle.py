"""Maximum-likelihood training on the 2-D Gaussian mixture: the default DSM loss against likelihood weighting with
importance-sampled time (training.likelihood_weighting + training.importance_weighting, score_flow), under VP and
sub-VP, same steps and seed. Each trial trains 4,000 steps, then evaluates its final checkpoint: the ODE bpd and the
bound of the 4,000 held-out points, and the Fréchet distance / KID of 4,000 samples.

  python experiments/sweep.py --sweep experiments/sweeps/toy_mle.py
  python experiments/likelihood_pairs.py --sweep experiments/sweeps/toy_mle.py --pair_key training.likelihood_weighting

The second command pairs each SDE's two trials point by point and adds the mixture's exact density
(docs/likelihood.md).
"""


def get_sweep():
  return {
      'config': 'configs/toy/gmm.py',
      'modes': ['train', 'eval'],
      'grid': {'training.sde': ['vpsde', 'subvpsde'], 'training.likelihood_weighting': [False, True]},
      'linked': {'training.likelihood_weighting': {True: {'training.importance_weighting': True}}},
      'overrides': {'eval.begin_ckpt': 2, 'eval.end_ckpt': 2,  # the final checkpoint (step 4000)
                    'eval.bpd_method': 'both'},
      'metrics': ['bpd', 'bound', 'fid', 'kid'],
  }
