"""Flax variables as a flat .npz ('a/b/c' keys, float32): how the shipped classifiers' weights are stored."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_sde import atomic_files


def save(variables, path):
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  atomic_files.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load(path, how_to_make):
  """The variables at `path`; a missing file says how to make it (`how_to_make`)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'weights {path} are absent; write them with `{how_to_make}`')
  with np.load(path) as npz:
    return traverse_util.unflatten_dict({k: jnp.asarray(npz[k]) for k in npz.files}, sep='/')
