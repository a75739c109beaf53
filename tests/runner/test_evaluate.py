"""--mode eval: FID/KID/IS and bpd as mean ± stderr, resumable round by round; metrics against analytic values."""
import json
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.runner import run_state
from helpers import REPO, finish, run_cli

QUICKSTART = str(REPO / 'configs' / 'quickstart.py')
TINY = ['--config.model.nf=16', '--config.model.num_scales=20', '--config.eval.num_samples=128',
        '--config.eval.batch_size=32', '--config.data.num_test=64', '--config.training.snapshot_freq=10',
        '--config.training.n_jitted_steps=5', '--config.eval.begin_ckpt=1', '--config.eval.end_ckpt=1']


def _tiny_config(stats_dir):
  from configs.quickstart import get_config
  from score_sde import config_table
  config = config_table.with_defaults(get_config())
  config.model.nf = 16
  config.data.num_test = 64
  config.training.snapshot_freq = 10
  config.training.n_jitted_steps = 5
  config.eval.stats_dir = str(stats_dir)
  return config


@pytest.fixture(scope='module')
def untrained_run(tmp_path_factory):
  """A run whose step-10 permanent checkpoint holds freshly initialised weights (no training compile)."""
  from score_sde.runner import checkpoints
  workdir = tmp_path_factory.mktemp('run')
  config = _tiny_config(workdir / 'stats')
  state = run_state.create_train_state(config, jax.random.PRNGKey(config.seed)).replace(step=jnp.asarray(10))
  run = checkpoints.RunCheckpoints(str(workdir))
  run.save(state, permanent=True)
  run.close()
  checkpoints.save_config(str(workdir), config)
  return workdir


def test_eval_killed_mid_way_resumes_without_redoing_rounds(untrained_run):
  args = ['--mode=eval', f'--config.eval.stats_dir={untrained_run / "stats"}', *TINY]
  rounds = untrained_run / 'eval' / 'ckpt_10'
  process = run_cli(untrained_run, *args, config=QUICKSTART)
  deadline = time.time() + 600
  while not (rounds / 'samples_0.npz').exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in rounds.glob('*.npz')}
  assert 'samples_0.npz' in before and len([n for n in before if n.startswith('samples')]) < 4, sorted(before)
  assert not (untrained_run / 'eval' / 'eval_results.json').exists()

  code, _, err = finish(run_cli(untrained_run, *args, config=QUICKSTART))
  assert code == 0, err[-3000:]
  for name, (mtime, data) in before.items():  # finished rounds were kept, not redone
    assert (rounds / name).stat().st_mtime_ns == mtime and (rounds / name).read_bytes() == data, name
  result = json.loads((untrained_run / 'eval' / 'eval_results.json').read_text())['checkpoints']['10']
  done_before = len([n for n in before if n.startswith('samples')])
  assert result['sampling_rounds_run_now'] == 4 - done_before
  assert result['bpd_rounds_run_now'] == 2 - len([n for n in before if n.startswith('bpd')])
  for metric in ('fid', 'kid', 'inception_score', 'bpd', 'loss'):
    assert np.isfinite(result[metric]['mean']) and np.isfinite(result[metric]['stderr']), (metric, result)
    assert result[metric]['stderr'] >= 0
  assert result['num_samples'] == 128 and result['nfe'] == 20 and result['feature_extractor'] == 'digits_classifier'
  # The reported FID is the Fréchet distance of all four rounds' features to the cached reference features.
  feats = np.concatenate([np.load(rounds / f'samples_{r}.npz')['features'] for r in range(4)])
  reference = np.load(next((untrained_run / 'stats').glob('*.npz')))['features']
  from score_sde.metrics.formulas import fid_from_features
  assert abs(fid_from_features(feats, reference) - result['fid']['mean']) < 1e-6 * result['fid']['mean']
  # Untrained weights: the samples are noise, which the digits classifier tells apart from digits by far.
  assert result['fid']['mean'] > 50 and 4.5 < result['bpd']['mean'] < 40


def test_sample_features_reads_the_kept_rounds_in_order(tmp_path):
  """What --mode eval keeps per sampling round (samples_<r>.npz under <eval_folder>/ckpt_<step>/), read back
  for paired comparisons of runs."""
  from score_sde.runner import evaluate
  rounds = tmp_path / 'eval_x' / 'ckpt_7'
  rounds.mkdir(parents=True)
  parts = [np.full((3, 2), r, np.float32) for r in range(3)]
  for r, part in enumerate(parts):
    np.savez(rounds / f'samples_{r}.npz', samples=np.zeros((3, 8, 8, 1), np.uint8), features=part, nfe=np.asarray(5))
  feats = evaluate.sample_features(str(tmp_path), 7, 'eval_x')
  assert feats.dtype == np.float64 and np.array_equal(feats, np.concatenate(parts))
  assert evaluate.sample_features(str(tmp_path), 8, 'eval_x') is None


def test_rounds_made_with_other_settings_are_refused(untrained_run):
  """Run after the resume test: its rounds were made with num_scales=20; 30 would mix two samplers."""
  if not (untrained_run / 'eval' / 'ckpt_10' / 'settings.json').exists():
    pytest.skip('needs the rounds of test_eval_killed_mid_way_resumes_without_redoing_rounds')
  code, _, err = finish(run_cli(untrained_run, '--mode=eval', f'--config.eval.stats_dir={untrained_run / "stats"}',
                                *TINY, '--config.model.num_scales=30', config=QUICKSTART), timeout=120)
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'num_scales' in err and '--eval_folder' in err, err


def test_bad_eval_settings_exit_2_before_any_work(untrained_run):
  code, _, err = finish(run_cli(untrained_run, '--mode=eval', *TINY, '--config.data.num_channels=3',
                                config=QUICKSTART), timeout=120)
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'digits_classifier reads 1-channel' in err, err


@pytest.mark.parametrize('field, value, message', [
    ('bpd_dataset', 'validation', 'bpd_dataset'), ('num_samples', 4, 'too few'),
    ('feature_extractor', 'clip', r"eval.feature_extractor='clip' is unknown; known: \['digits_classifier', 'inception'\]"),
])
def test_bad_eval_settings_are_refused_by_validation(tmp_path, field, value, message):
  from score_sde.runner import validate
  config = _tiny_config(tmp_path)
  config.eval[field] = value
  with pytest.raises(validate.ConfigError, match=message):
    validate.validate(config, 'eval')


def test_missing_inception_weights_exit_2_with_where_to_get_them(tmp_path, untrained_run):
  code, _, err = finish(run_cli(untrained_run, '--mode=eval', '--config.eval.feature_extractor=inception',
                                f'--config.eval.inception_weights={tmp_path / "none.npz"}', *TINY,
                                config=QUICKSTART), timeout=120)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert 'pt_inception-2015-12-05' in err and 'convert_inception_weights.py' in err


def test_a_checkpoint_range_with_no_checkpoint_is_one_line(untrained_run):
  code, _, err = finish(run_cli(untrained_run, '--mode=eval', *TINY, '--config.eval.begin_ckpt=5',
                                '--config.eval.end_ckpt=9', config=QUICKSTART), timeout=120)
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'saved steps: [10]' in err, err
