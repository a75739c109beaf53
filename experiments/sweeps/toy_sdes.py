"""VE, VP and sub-VP SDEs on the 2-D Gaussian mixture: train each, then its bits/dim on held-out points.

  python experiments/sweep.py --sweep experiments/sweeps/toy_sdes.py
"""


def get_sweep():
  return {
      'config': 'configs/toy/gmm.py',
      'modes': ['train', 'likelihood'],
      'grid': {'training.sde': ['vesde', 'vpsde', 'subvpsde']},
      # VESDE reads model.sigma_min / sigma_max; gmm.py's 0.01 and 10 bracket the data (its modes are at most
      # 6.4 apart). A VE network is fed σ(t) instead of t, so embed log σ with Fourier features and divide the
      # output by σ, as the official VE configs do; the VP-type SDEs keep gmm.py's positional embedding of t.
      'linked': {'training.sde': {'vesde': {'model.embedding_type': 'fourier', 'model.scale_by_sigma': True}}},
      'metrics': ['bpd'],
      'plot': {'x': 'training.sde', 'y': 'bpd'},
  }
