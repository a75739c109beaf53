"""VE, VP and sub-VP SDEs on the 2-D Gaussian mixture: train each, then evaluate its final checkpoint:
bits/dim of held-out points, and the Fréchet distance / KID of 4,000 samples to the data (the points are
their own features).

  python experiments/sweep.py --sweep experiments/sweeps/toy_sdes.py
"""


def get_sweep():
  return {
      'config': 'configs/toy/gmm.py',
      'modes': ['train', 'eval'],
      'grid': {'training.sde': ['vesde', 'vpsde', 'subvpsde']},
      # VESDE reads model.sigma_min / sigma_max; gmm.py's 0.01 and 10 bracket the data (its modes are at most
      # 6.4 apart). A VE network is fed σ(t) instead of t, so embed log σ with Fourier features and divide the
      # output by σ, as the official VE configs do; the VP-type SDEs keep gmm.py's positional embedding of t.
      'linked': {'training.sde': {'vesde': {'model.embedding_type': 'fourier', 'model.scale_by_sigma': True}}},
      'overrides': {'eval.begin_ckpt': 2, 'eval.end_ckpt': 2},  # the final checkpoint (step 4000)
      'metrics': ['bpd', 'fid', 'kid', 'nfe'],
      'plot': {'x': 'training.sde', 'y': 'bpd'},
  }
