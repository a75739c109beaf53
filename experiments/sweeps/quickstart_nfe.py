"""Sample quality against score evaluations (NFE) on the trained quickstart: PC at 1000/250/100 steps, the
probability-flow ODE (RK45), DDIM, DPM-Solver++ 2M/3M and EDM's Heun sampler at 10-50 NFE.

Evaluates runs/quickstart (train it first, see README) without retraining: each trial writes
runs/quickstart/eval_quickstart_nfe_<trial>/eval_results.json, with FID/KID on the digits classifier's
features of 1,000 samples (4x the quickstart eval's 256).

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_nfe.py

Each grid value of `sampling.method` is a label for one setting; `linked` turns it into the real settings
(the real `sampling.method` among them), so the table and plot have one row and one point per setting.
NFE counts the final denoising step: the few-step samplers' Tweedie step (+1), PC's last noise-free mean (+0).
"""

def _settings():
  settings = {}
  for steps in (1000, 250, 100):   # PC: steps = model.num_scales, as the official sampler
    settings[f'pc_{steps}'] = {'sampling.method': 'pc', 'model.num_scales': steps}
  settings['ode'] = {'sampling.method': 'ode'}
  for nfe in (10, 20, 50):         # ddim: num_steps evaluations + 1
    settings[f'ddim_nfe{nfe}'] = {'sampling.method': 'ddim', 'sampling.num_steps': nfe - 1}
  for nfe in (10, 15, 20, 30, 50):
    settings[f'dpm2m_nfe{nfe}'] = {'sampling.method': 'dpm_solver++', 'sampling.order': 2,
                                   'sampling.num_steps': nfe - 1}
  for nfe in (10, 20, 50):
    settings[f'dpm3m_nfe{nfe}'] = {'sampling.method': 'dpm_solver++', 'sampling.order': 3,
                                   'sampling.num_steps': nfe - 1}
  for levels in (6, 10, 18, 26):   # edm_heun: 2 levels - 2 evaluations + 1 -> NFE 11, 19, 35, 51
    settings[f'edm_nfe{2 * levels - 1}'] = {'sampling.method': 'edm_heun', 'sampling.num_steps': levels}
  return settings


def get_sweep():
  settings = _settings()
  return {
      'config': 'configs/quickstart.py',
      'workdir': 'runs/quickstart',
      'modes': ['eval'],
      'grid': {'sampling.method': list(settings)},
      'linked': {'sampling.method': settings},
      'overrides': {
          'sampling.predictor': 'reverse_diffusion',
          'sampling.corrector': 'none',
          'sampling.noise_removal': True,
          'eval.enable_sampling': True,
          'eval.enable_bpd': False,
          'eval.enable_loss': False,
          'eval.num_samples': 1000,
          'eval.batch_size': 125,  # at most the 128 held-out digits (the same field sizes the loss batches)
      },
      'metrics': ['fid', 'kid', 'nfe'],
      'plot': {'x': 'sampling.method', 'y': 'fid'},
  }
