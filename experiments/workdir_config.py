"""The config a run was trained with, rebuilt from its <workdir>/config.json, as a config file for run.py:

  python run.py --config experiments/workdir_config.py:runs/quickstart --workdir runs/quickstart --mode likelihood
"""
import json
import os

import ml_collections


def _tuples(value):
  """JSON turns the configs' tuples (ch_mult, attn_resolutions, ...) into lists; turn them back."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def get_config(workdir):
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))
