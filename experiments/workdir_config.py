"""The config a run was trained with, rebuilt from its <workdir>/config.json, as a config file for run.py:

  python run.py --config experiments/workdir_config.py:runs/quickstart --workdir runs/quickstart --mode likelihood
"""
from score_sde import checkpoints


def get_config(workdir):
  return checkpoints.load_config(workdir)
