"""The one Registry type, and that every name a user picks comes from a registry, never a copied list."""
import pytest

from helpers import REPO
from score_sde import config_table, datasets, sampling, sde_lib
from score_sde.registry import Registry


def test_register_get_names_info_and_did_you_mean():
  table = Registry('sampling.thing')

  @table.register('Alpha', cost=2)
  def alpha():
    return 'a'

  table.register('beta', None)  # None is a value like any other
  assert table.get('alpha') is alpha and table.get('ALPHA') is alpha  # names match without regard to case
  assert table.get('beta') is None
  assert table.names() == ['Alpha', 'beta'] and table.info('Alpha') == {'cost': 2}
  with pytest.raises(ValueError, match=r"^sampling.thing='alpah' is unknown; known: \['Alpha', 'beta'\] "
                                       r"\(did you mean 'Alpha'\?\)\.$"):
    table.get('alpah')
  assert 'did you mean' not in table.problem('zzzzzz')
  with pytest.raises(ValueError, match='registered twice'):
    table.register('alpha', lambda: None)
  table.unregister('alpha')
  assert 'alpha' not in table and table.names() == ['beta']


def test_case_sensitive_registry_keeps_case():
  table = Registry('model.name', case_sensitive=True)
  table.register('NCSN', 1)
  assert 'NCSN' in table and 'ncsn' not in table


def test_a_registered_name_is_at_once_allowed_by_the_config_table():
  """The config table keeps no list of its own: registering a name is all it takes."""
  domain = config_table.FIELDS['training.sde'].domain
  assert 'is unknown' in domain('probe_sde')
  sde_lib.SDES.register('probe_sde', sde_lib.VPSDE)
  try:
    assert domain('probe_sde') is None
  finally:
    sde_lib.SDES.unregister('probe_sde')
  assert 'is unknown' in domain('probe_sde')


@pytest.mark.parametrize('field,registry', [
    ('sampling.method', sampling.SAMPLERS), ('sampling.predictor', sampling.PREDICTORS),
    ('sampling.corrector', sampling.CORRECTORS), ('training.sde', sde_lib.SDES)])
def test_every_registered_name_passes_its_field_and_a_typo_gets_a_suggestion(field, registry):
  domain = config_table.FIELDS[field].domain
  for name in registry.names():
    assert domain(name) is None, (field, name)
  typo = registry.names()[0][:-1] + 'q'
  assert 'is unknown' in domain(typo)


def test_datasets_spec_reads_the_registration_facts():
  config = config_table.load(str(REPO / 'configs' / 'quickstart.py'))
  assert datasets.spec(config).num_levels == datasets.DIGITS_LEVELS == 17
  config.data.dataset = 'gmm'
  assert datasets.spec(config).shape == (2,) and not datasets.spec(config).is_image
