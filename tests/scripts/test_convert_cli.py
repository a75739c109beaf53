"""convert_checkpoint.py: an official-format Flax checkpoint becomes a run that run.py samples from."""
import subprocess
import sys

import flax
import jax
import numpy as np

from helpers import ENV, REPO, finish, run_cli

CONFIG = str(REPO / 'configs' / 'quickstart.py')
TINY = ['--config.model.nf=16', '--config.model.num_scales=10', '--config.eval.num_samples=8',
        '--config.eval.batch_size=8']


def test_official_flax_checkpoint_converts_and_samples(tmp_path):
  sys.path.insert(0, str(REPO))
  from configs.quickstart import get_config
  from score_sde.models import convert
  from score_sde import config_table
  config = config_table.with_defaults(get_config())
  config.model.nf = 16
  shapes, _ = convert.abstract_variables(config)
  rng = np.random.default_rng(0)
  ema = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.05, shapes['params'])
  official = {'step': 7, 'optimizer': {'target': ema, 'state': {}}, 'params_ema': ema, 'ema_rate': 0.999}
  path = tmp_path / 'checkpoint_7'
  path.write_bytes(flax.serialization.msgpack_serialize(official))

  command = [sys.executable, str(REPO / 'convert_checkpoint.py'), f'--config={CONFIG}', f'--checkpoint={path}',
             f'--workdir={tmp_path / "run"}', '--step=7', *TINY]
  done = subprocess.run(command, env=ENV, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  from score_sde.runner import checkpoints
  state = checkpoints.restore(str(tmp_path / 'run'))
  assert int(state.step) == 7
  for ours, theirs in zip(jax.tree.leaves(state.params_ema), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(ours, theirs)
  code, _, err = finish(run_cli(tmp_path / 'run', '--mode=sample', *TINY, config=CONFIG))
  assert code == 0, err[-2000:]
  assert (tmp_path / 'run' / 'samples' / 'samples_step_7.png').exists()

  again = subprocess.run(command, env=ENV, capture_output=True, text=True)
  assert again.returncode == 2 and 'already holds checkpoints' in again.stderr
  missing = subprocess.run(command[:3] + [f'--checkpoint={tmp_path / "nope"}', f'--workdir={tmp_path / "x"}'],
                           env=ENV, capture_output=True, text=True)
  assert missing.returncode == 2 and 'no checkpoint file' in missing.stderr
