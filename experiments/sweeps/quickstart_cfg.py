"""Classifier-free guidance on the class-conditional quickstart: class accuracy against Fréchet distance, γ from 0 to 5,
guided everywhere and only on the guidance interval σ/α in (0.28, 1.61] (Kynkäänniemi et al. 2024's, in EDM units).

Evaluates runs/quickstart_cond (train it first: python run.py --config configs/quickstart_cond.py --workdir
runs/quickstart_cond --mode train) without retraining: each trial writes
runs/quickstart_cond/eval_quickstart_cfg_<trial>/eval_results.json with 1,000 class-balanced samples (100 per digit),
their class accuracy judged by the clean digits classifier (not the model) and the digits-classifier Fréchet distance
to the training digits. γ = 1 + w: 0 is the null label alone (unconditional), 1 plain conditional.

  python experiments/sweep.py --sweep experiments/sweeps/quickstart_cfg.py
  python experiments/plot_quickstart_cfg.py
"""


def get_sweep():
  return {
      'config': 'configs/quickstart_cond.py',
      'workdir': 'runs/quickstart_cond',
      'modes': ['eval'],
      'grid': {
          'sampling.guidance_interval': ['', '0.28,1.61'],
          'sampling.guidance_scale': [0., 1., 1.5, 2., 3., 5.],
      },
      'overrides': {
          'sampling.method': 'dpm_solver++',  # 2M: the multistep solver DPM-Solver's author advises at large γ
          'sampling.order': 2,
          'sampling.num_steps': 30,
          'eval.enable_sampling': True,
          'eval.enable_bpd': False,
          'eval.enable_loss': False,
          'eval.num_samples': 1000,
          'eval.batch_size': 125,
      },
      'metrics': ['class_accuracy', 'fid', 'nfe'],
      'plot': {'x': 'sampling.guidance_scale', 'y': 'class_accuracy', 'series': 'sampling.guidance_interval'},
  }
