"""Quickstart with EDM training: configs/quickstart.py with model.parametrization='edm' and training.loss='edm'.

Everything else is the quickstart's: the same DDPM++ on the 8×8 digits, the VP SDE, the same steps, optimiser,
EMA and sampler. The network F becomes EDM's preconditioned denoiser (score_sde/models/preconditioning.py),
with the default σ_data = 0.5. The centred, dequantised digits have a standard deviation of about 0.75.
The loss draws ln σ̃ ~ N(-1.2, 1.2²) on the VP SDE's range σ̃ in [0.001, 152] and weights it by
(σ̃² + σ_d²)/(σ̃ σ_d)². Every sampler takes the result, because the wrapper sits at the score-function seam.

  python run.py --config configs/quickstart_edm.py --workdir runs/quickstart_edm --mode train
"""
from configs.quickstart import get_config as get_quickstart_config


def get_config():
  config = get_quickstart_config()
  config.model.parametrization = 'edm'
  config.model.sigma_data = 0.5
  config.training.loss = 'edm'
  config.training.p_mean = -1.2
  config.training.p_std = 1.2
  return config
