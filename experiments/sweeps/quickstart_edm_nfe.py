"""EDM training against the score SDE's: digits-classifier Fréchet distance against NFE of the EDM-trained quickstart.

Evaluates runs/quickstart_edm (configs/quickstart_edm.py, trained first) without retraining, at the settings of
EDM's comparison: EDM's Heun sampler at 6, 10 and 18 noise levels (NFE 11, 19, 35) and DPM-Solver++ 2M at 10 and
20 steps (NFE 11, 21), 1,000 samples each. Its twin, quickstart_vp_nfe.py, evaluates the VP quickstart
(runs/quickstart) at the same settings; experiments/edm_quickstart_report.py tabulates and plots both (docs/edm.md).

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_edm_nfe.py

Each trial writes <workdir>/eval_quickstart_edm_nfe_<setting>/eval_results.json. The sampling seed is the config's,
so both trainings start from the same latents.
"""

SETTINGS = {  # label -> overrides; NFE counts the final Tweedie step
    'edm_levels6': {'sampling.method': 'edm_heun', 'sampling.num_steps': 6},     # 2 * 6 - 2 + 1 = 11
    'edm_levels10': {'sampling.method': 'edm_heun', 'sampling.num_steps': 10},   # 19
    'edm_levels18': {'sampling.method': 'edm_heun', 'sampling.num_steps': 18},   # 35
    'dpm2m_steps10': {'sampling.method': 'dpm_solver++', 'sampling.order': 2, 'sampling.num_steps': 10},  # 11
    'dpm2m_steps20': {'sampling.method': 'dpm_solver++', 'sampling.order': 2, 'sampling.num_steps': 20},  # 21
}


def nfe_sweep(config, workdir):
  """The sweep of SETTINGS on one trained run: one eval trial per setting, 1,000 samples."""
  return {
      'config': config,
      'workdir': workdir,
      'modes': ['eval'],
      'grid': {'sampling.method': list(SETTINGS)},  # labels; `linked` sets the real sampling.method
      'linked': {'sampling.method': SETTINGS},
      'overrides': {
          'sampling.noise_removal': True,
          'eval.enable_sampling': True,
          'eval.enable_bpd': False,
          'eval.enable_loss': False,
          'eval.num_samples': 1000,
          'eval.batch_size': 125,
          'eval.num_bootstrap': 50,
      },
      'metrics': ['fid', 'kid', 'nfe'],
      'plot': {'x': 'sampling.method', 'y': 'fid'},
  }


def get_sweep():
  return nfe_sweep('configs/quickstart_edm.py', 'runs/quickstart_edm')
