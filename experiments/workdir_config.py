"""The config a run was trained with, rebuilt from its <workdir>/config.json, as a config file for run.py:

  python run.py --config experiments/workdir_config.py:runs/quickstart --workdir runs/quickstart --mode likelihood

The part after ':' is the workdir (ml_collections' `file.py:argument` form).
"""
import os

from score_sde import config_table
from score_sde.runner import checkpoints


def get_config(workdir=None):
  if not workdir:
    raise config_table.ConfigError('name the trained run after a colon: experiments/workdir_config.py:<workdir>.')
  if not os.path.isdir(workdir):
    raise config_table.ConfigError(f'workdir {workdir!r} does not exist; give the folder of a trained run.')
  if not os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE)):
    raise config_table.ConfigError(f'{workdir} has no {checkpoints.CONFIG_FILE}, so it is not a run that run.py '
                                   'trained; train it first (--mode train) or give its config file.')
  return checkpoints.load_config(workdir)
