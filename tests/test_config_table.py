"""Every experiment config (configs/ve, vp, subvp) loads and builds its model at full size.

Models are built with jax.eval_shape (no compute); parameter counts are printed (pytest -s)
and recorded as junit properties.
"""
import json
import pathlib

import pytest

from score_sde import models, sde_lib
from score_sde.models import convert

from helpers import REPO
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
  from score_sde import config_table
  return config_table.load(str(path))


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


# --- every shipped config validates; the table checks every field's domain ----------------------------

import ml_collections  # noqa: E402

from score_sde import config_table
from score_sde.runner import validate

SHIPPED = CONFIG_FILES + [REPO / 'configs' / 'quickstart.py', REPO / 'configs' / 'quickstart_cond.py',
                          REPO / 'configs' / 'toy' / 'gmm.py']


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: str(p.relative_to(REPO / 'configs')))
def test_every_shipped_config_validates_for_every_mode(path):
  config = config_table.load(str(path))
  for mode in ('train', 'sample', 'likelihood', 'eval'):
    if mode == 'eval' and config.eval.enable_sampling and config.eval.feature_extractor == 'inception':
      config.eval.enable_sampling = False  # Inception weights are checked by their own tests
    validate.validate(config, mode)


def test_every_field_can_be_set_on_every_config():
  names = set(config_table.FIELDS)
  for path in SHIPPED:
    config = config_table.load(str(path))
    missing = names - set(config_table.field_names(config))
    assert not missing, (path, sorted(missing))


# Values outside each kind of domain; a domain the test does not know fails the test.
OUT_OF_DOMAIN = {
    config_table.positive_int: [0, -4, 2.5, True],
    config_table.nonneg_int: [-1, 1.5],
    config_table.positive: [0, -1e-3, 'a'],
    config_table.nonneg: [-1e-3, 'a'],
    config_table.real: ['a'],
    config_table.open_unit: [0., 1., 1.5],
    config_table.ema_rate: [1., -0.1],
    config_table.probability: [1., -0.1],
    config_table.boolean: ['yes', 1],
    config_table.string: [3, None],
    config_table.int_tuple: [(0, 1), 'abc', 3],
    config_table.grad_clip: [0., 'a'],
    config_table.unit_interval: [-0.1, 1.5],
    config_table.mask_kind: ['circle', 3],
    config_table.class_ids: [3, None],
    config_table.class_count: [-2, 2.5, True],
    config_table.noise_interval: ['5,0.3', '0.3', 'a,b', '-1,2', 3],
}


def bad_values(field):
  if field.domain in OUT_OF_DOMAIN:
    return OUT_OF_DOMAIN[field.domain]
  kind = field.domain.__qualname__.split('.')[0]
  assert kind in ('one_of', 'registered', 'at_least'), f'no out-of-domain examples for {field.domain.__qualname__}'
  return [1, 0, 2.5] if kind == 'at_least' else ['no_such_name_42', 7]


@pytest.fixture(scope='module')
def quickstart():
  return config_table.load(str(REPO / 'configs' / 'quickstart.py'))


def test_each_field_out_of_its_domain_is_refused_by_name(quickstart):
  validate.validate(quickstart, 'train')  # the config itself is valid
  checked = 0
  for name, field in config_table.FIELDS.items():
    for value in bad_values(field):
      config = ml_collections.ConfigDict(quickstart.to_dict(), type_safe=False)  # any value, as a typo gives
      section, _, key = name.rpartition('.')
      (config[section] if section else config)[key] = value
      with pytest.raises(validate.ConfigError) as error:
        validate.validate(config, 'train')
      assert name in str(error.value), (name, value, str(error.value))
      assert '\n' not in str(error.value)
      checked += 1
  assert checked > 2 * len(config_table.FIELDS)


def test_a_field_missing_from_a_config_gets_its_default():
  import ml_collections
  config = ml_collections.ConfigDict({'training': {'sde': 'vpsde'}, 'data': {'dataset': 'gmm'},
                                      'model': {'name': 'mlp'}})
  full = config_table.with_defaults(config)
  for name, field in config_table.FIELDS.items():
    if field.default is not config_table.REQUIRED:
      section, _, key = name.rpartition('.')
      assert (full[section] if section else full)[key] == field.default, name
