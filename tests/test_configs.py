"""Every experiment config (configs/ve, vp, subvp) loads and builds its model at full size.

Models are built with jax.eval_shape (no compute); parameter counts are printed (pytest -s)
and recorded as junit properties.
"""
import importlib.util
import json
import pathlib
import sys

import pytest

from score_sde import models, sde_lib
from score_sde.models import convert

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for sub in ('ve', 'vp', 'subvp') for p in (REPO / 'configs' / sub).rglob('*.py'))

# Exact counts of the official networks (PyTorch `sum(p.numel() for p in model.parameters())`).
OFFICIAL_COUNTS = {
    # timing anchor of the official PyTorch code: DDPM++ cont. (VP) with model.nf = 64
    ('vp/cifar10_ddpmpp_continuous.py', 64): 15_476_675,
}
# Figures from the papers, to within 2 %.
PAPER_COUNTS = {
    # Ho et al. 2020: 35.7M. The score_sde DDPM has 35.2M: it attends once per up-sampling level
    # where the original attends after every block (two fewer 256-channel attention blocks).
    'vp/ddpm/cifar10.py': 35.7e6,
}


def load_config(path):
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the files import configs.default_*_configs, as the official ones
  spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


_COUNTS = {}


def param_count(config):
  """Full-size parameter count via eval_shape, cached per architecture (many configs share one)."""
  key = json.dumps([config.model.to_dict(), config.data.image_size, config.data.num_channels],
                   sort_keys=True, default=str)
  if key not in _COUNTS:
    _COUNTS[key] = convert.count_params(convert.abstract_variables(config)[0])
  return _COUNTS[key]


def test_configs_are_found():
  assert len(CONFIG_FILES) >= 39, CONFIG_FILES  # 39 official experiment configs


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / 'configs')))
def test_config_builds_full_size_model(path, record_property):
  config = load_config(path)
  rel = str(path.relative_to(REPO / 'configs'))
  assert config.model.name in models.utils.model_names()
  sde = sde_lib.get_sde(config)
  assert sde.N == config.model.num_scales
  count = param_count(config)
  print(f'{rel}: {config.model.name} {count:,} parameters')
  record_property('num_parameters', count)
  assert count > 0
  if rel in PAPER_COUNTS:
    assert abs(count / PAPER_COUNTS[rel] - 1) < 0.02, (count, PAPER_COUNTS[rel])


@pytest.mark.parametrize('rel, nf', sorted(OFFICIAL_COUNTS))
def test_official_parameter_counts(rel, nf):
  config = load_config(REPO / 'configs' / rel)
  config.model.nf = nf
  assert param_count(config) == OFFICIAL_COUNTS[(rel, nf)]


def test_same_network_same_count_across_sdes():
  counts = {rel: param_count(load_config(REPO / 'configs' / rel)) for rel in (
      'vp/cifar10_ddpmpp.py', 'vp/cifar10_ddpmpp_continuous.py', 'subvp/cifar10_ddpmpp_continuous.py')}
  assert len(set(counts.values())) == 1, counts
