"""Quickstart, class-conditional: configs/quickstart.py with a class embedding for each digit and label dropout.

The DDPM++ of the quickstart gets model.num_classes=10 (a learned embedding per digit, plus a learned null label
added to the noise embedding) and trains on the null label 10% of the time (training.label_dropout=0.1), so one
network gives both the conditional and the unconditional score: classifier-free guidance (docs/guidance.md).
Everything else is the quickstart's.

  python run.py --config configs/quickstart_cond.py --workdir runs/quickstart_cond --mode train
  python run.py --config configs/quickstart_cond.py --workdir runs/quickstart_cond --mode sample --config.sampling.condition=cfg --config.sampling.guidance_scale=2
"""
from configs.quickstart import get_config as get_quickstart_config


def get_config():
  config = get_quickstart_config()
  config.model.num_classes = 10          # the digits' classes (-1 would take them from the data)
  config.training.label_dropout = 0.1    # Ho & Salimans' 10-20%; k-diffusion and DiT use 0.1
  config.sampling.guidance_scale = 1.    # γ = 1 + w: 1 plain conditional; --mode eval samples every class
  return config
