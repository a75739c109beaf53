"""PC sampling of the trained quickstart: Langevin corrector snr × number of sampling steps, FID/KID vs steps.

Evaluates runs/quickstart (train it first, see README) without retraining: each trial writes
runs/quickstart/eval_quickstart_sampler_<trial>/eval_results.json.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_sampler.py
"""


def get_sweep():
  return {
      'config': 'configs/quickstart.py',
      'workdir': 'runs/quickstart',
      'modes': ['eval'],
      'grid': {
          'sampling.snr': [0.08, 0.16],
          'model.num_scales': [25, 100, 250],  # sampling steps: the SDE's discretisation N
      },
      'overrides': {
          'sampling.method': 'pc',
          'sampling.predictor': 'reverse_diffusion',
          'sampling.corrector': 'langevin',
          'sampling.n_steps_each': 1,
          'eval.enable_sampling': True,
          'eval.enable_bpd': False,
          'eval.enable_loss': False,
          'eval.num_samples': 256,
      },
      'metrics': ['fid', 'kid', 'nfe'],
      'plot': {'x': 'model.num_scales', 'series': 'sampling.snr', 'y': 'fid', 'logx': True},
  }
