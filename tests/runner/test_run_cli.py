"""run.py end to end: exact resume after SIGKILL, and one clear line with exit code 2 for bad input."""
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ENV, REPO, SMALL, TOY, final_params, finish, run_cli


def test_training_killed_three_times_resumes_bit_for_bit(reference_run, tmp_path):
  reference = final_params(reference_run)

  chooser = random.Random(int(time.time()))
  killed = tmp_path / 'killed'
  kills = []
  for _ in range(3):
    process = run_cli(killed, '--mode=train', *SMALL)
    delay = chooser.uniform(4., 14.)
    try:
      process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGKILL)
      process.wait()
    log = killed / 'metrics.jsonl'
    kills.append((round(delay, 1), log.read_text().count('"loss"') if log.exists() else 0))
  code, _, err = finish(run_cli(killed, '--mode=train', *SMALL))
  assert code == 0, (kills, err[-2000:])
  resumed = final_params(killed)
  assert resumed[2] == reference[2] == 300
  for a, b in zip(reference[0] + reference[1], resumed[0] + resumed[1]):
    np.testing.assert_array_equal(a, b, err_msg=f'kills (seconds, logged steps): {kills}')
  # The metrics log has each step once, in order, despite the kills.
  steps = [line for line in (killed / 'metrics.jsonl').read_text().splitlines() if '"loss"' in line]
  assert len(steps) == 30


SHORT = SMALL[1:] + ['--config.training.snapshot_freq=10']


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  """A toy run of 20 steps with permanent checkpoints at 10 and 20; tests work on copies of it."""
  workdir = tmp_path_factory.mktemp('short') / 'run'
  code, _, err = finish(run_cli(workdir, '--mode=train', *SHORT, '--config.training.n_iters=20'))
  assert code == 0, err[-2000:]
  return workdir


def copy_of(run, tmp_path):
  shutil.copytree(run, tmp_path / 'run')
  return tmp_path / 'run'


def test_a_corrupt_latest_checkpoint_is_skipped(short_run, tmp_path):
  """Truncate the newest checkpoint's arrays: restore warns and falls back to the one before."""
  workdir = copy_of(short_run, tmp_path)
  from score_sde.runner import checkpoints
  latest = workdir / 'checkpoints' / '20'
  for path in latest.rglob('*'):
    if path.is_file() and path.name != '_CHECKPOINT_METADATA':
      path.write_bytes(b'')
  (workdir / 'checkpoints-meta' / '20').rename(workdir / 'checkpoints-meta' / 'gone')
  state = checkpoints.restore(str(workdir))
  assert int(state.step) == 10


BAD_INPUTS = {
    'unknown sde': (['--config.training.sde=cosine'], "training.sde='cosine' is unknown; known: ['edm', 'subvpsde', 'vesde', 'vpsde']"),
    'unknown model': (['--config.model.name=unet9000'], "model.name='unet9000' is unknown; known: ['ddpm', 'mlp'"),
    'unknown predictor': (['--config.sampling.predictor=heun'], "sampling.predictor='heun' is unknown; known: ['ancestral_sampling'"),
    'unknown corrector': (['--config.sampling.corrector=mala'], "sampling.corrector='mala' is unknown; known: ['ald', 'langevin', 'none']"),
    'unknown dataset': (['--config.data.dataset=imagenet64'], "Unknown dataset 'imagenet64'"),
    'unknown field': (['--config.training.batchsize=8'], "Did you mean 'training.batch_size'?"),
    'unknown section': (['--config.trainin.n_iters=5'], "Did you mean 'training.n_iters'?"),
    'bad override': (['--config.training.batch_size=many'], 'batch_size'),
    'zero batch': (['--config.training.batch_size=0'], 'training.batch_size=0 must be a positive integer'),
    'negative batch': (['--config.training.batch_size=-4'], 'training.batch_size=-4 must be a positive integer'),
    'unknown flag': (['--epochs=3'], 'unknown flag --epochs'),
    'no mode': ([], '--mode is required'),
    'unknown mode': (['--mode=trian'], "--mode='trian' is unknown; known: ['eval', 'likelihood', 'sample', 'train'] (did you mean 'train'?)"),
    'missing config file': (['--config=configs/no_such_config.py'], "config file 'configs/no_such_config.py' does "
                            'not exist'),
    'discrete subvp': (['--config.training.sde=subvpsde', '--config.training.continuous=False'],
                       'Discrete training is defined for VESDE'),
    'model cannot take the data': (['--config.data.dataset=digits'], 'mlp'),
    'sample without a checkpoint': (['--mode=sample'], 'no checkpoint in'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_leaves_the_workdir(tmp_path, case):
  args, expected = BAD_INPUTS[case]
  if case != 'no mode' and not any(a.startswith('--mode') for a in args):
    args = ['--mode=train'] + args
  if any(a.startswith('--config=') for a in args):  # replaces the default config
    config = [a for a in args if a.startswith('--config=')][0].split('=', 1)[1]
    args = [a for a in args if not a.startswith('--config=')]
  else:
    config = TOY
  workdir = tmp_path / 'work'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('keep me')
  code, out, err = finish(run_cli(workdir, *args, config=config))
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2, err[-2000:]
  assert len(lines) == 1 and 'Traceback' not in err, err
  assert expected in lines[0], lines[0]
  assert sorted(p.name for p in workdir.iterdir()) == ['notes.txt']
  assert (workdir / 'notes.txt').read_text() == 'keep me'


def test_batch_that_does_not_divide_across_devices(tmp_path):
  env = dict(ENV, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  code, _, err = finish(run_cli(tmp_path / 'w', '--mode=train', '--config.training.batch_size=12', env=env))
  assert code == 2 and 'does not divide across 8 devices' in err, err[-2000:]
  assert not (tmp_path / 'w').exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(short_run, tmp_path):
  workdir = copy_of(short_run, tmp_path)
  code, _, err = finish(run_cli(workdir, '--mode=train', *SHORT, '--config.training.n_iters=40',
                                '--config.optim.lr=1e30'))
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == 1 and lines and 'at step' in lines[0] and 'Traceback' not in err, err[-2000:]
  from score_sde.runner import checkpoints
  assert int(checkpoints.restore(str(workdir)).step) == 20


def test_checkpoints_of_another_config_are_not_silently_replaced(short_run, tmp_path):
  """The run stops with one line, and every file of the workdir is still there, unchanged (but the lock, which
  names its holder, and run.log, where the library lines logged while the checkpoints were read go)."""
  workdir = copy_of(short_run, tmp_path)
  before = contents(workdir)
  code, _, err = finish(run_cli(workdir, '--mode=train', *SHORT, '--config.training.n_iters=30',
                                '--config.model.nf=48'))
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == 2 and lines and 'none restores' in lines[0], err[-2000:]
  assert contents(workdir) == before


@pytest.mark.parametrize('mode', ['sample', 'likelihood'])
def test_a_config_that_fits_no_checkpoint_is_one_line_for_the_other_modes(short_run, mode):
  """A model the checkpoints do not hold (here a wider one) is named as such, exit 2, before anything runs."""
  code, _, err = finish(run_cli(short_run, f'--mode={mode}', *SHORT, '--config.model.nf=48'))
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2 and len(lines) == 1 and 'none fits the state this config builds' in lines[0], err[-2000:]


def contents(workdir):
  """Each file's bytes by path, but TensorBoard's, the lock's and the log file's."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in workdir.rglob('*')
          if p.is_file() and 'tensorboard' not in str(p) and p.name not in ('run.log', '.lock-training')}


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_prints_usage_and_exits_0(flag):
  result = subprocess.run([sys.executable, str(REPO / 'run.py'), flag], env=ENV, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  for text in ('usage: python run.py', 'train', 'eval', 'sample', 'likelihood', '--config.<section>.<field>=<value>'):
    assert text in result.stdout


def test_events_happen_at_their_steps_whatever_n_jitted_steps(tmp_path):
  """n_iters=7, n_jitted_steps=5, log_freq=3: the loss is logged at steps 3 and 6 and step 7 is saved."""
  workdir = tmp_path / 'w'
  code, out, err = finish(run_cli(workdir, '--mode=train', '--config.training.n_iters=7',
                                  '--config.training.n_jitted_steps=5', '--config.training.log_freq=3',
                                  '--config.training.eval_freq=4', '--config.training.snapshot_freq=100',
                                  '--config.training.snapshot_freq_for_preemption=5',
                                  '--config.training.snapshot_sampling=False', '--config.training.batch_size=16',
                                  '--config.model.nf=8'))
  assert code == 0, err[-2000:]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [3, 6]
  assert [r['step'] for r in records if 'eval_loss' in r] == [4]
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == [7]
  assert sorted(int(p.name) for p in (workdir / 'checkpoints-meta').iterdir()) == [7]
  assert out.startswith('Training ') and 'starting from scratch' in out


def test_a_second_training_on_a_live_workdir_exits_2_naming_the_holder(tmp_path):
  workdir = tmp_path / 'w'
  first = run_cli(workdir, '--mode=train', *SMALL, '--config.training.n_iters=100000')
  try:
    deadline = time.time() + 300
    while not (workdir / 'metrics.jsonl').exists() and time.time() < deadline and first.poll() is None:
      time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-2000:]
    code, _, err = finish(run_cli(workdir, '--mode=train', *SMALL, '--config.training.n_iters=100000'))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert f'pid {first.pid}' in lines[0] and 'in use by a running training' in lines[0], lines[0]
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()


DATASET_FAMILIES = {
    'cifar10': ('vp/cifar10_ddpmpp_continuous.py', 'cifar10'),
    'celeba': ('ve/celeba_ncsnpp.py', 'celeb_a'),
    'lsun': ('ve/church_ncsnpp_continuous.py', 'lsun'),
    'ffhq tfrecords': ('ve/ffhq_ncsnpp_continuous.py', 'tfrecords'),
    'celebahq tfrecords': ('ve/celebahq_256_ncsnpp_continuous.py', 'tfrecords'),
}


@pytest.mark.parametrize('family', list(DATASET_FAMILIES))
def test_a_paper_config_reaches_its_missing_dataset(tmp_path, family):
  rel, expected = DATASET_FAMILIES[family]
  empty = tmp_path / 'empty'
  empty.mkdir()
  workdir = tmp_path / 'w'
  code, _, err = finish(run_cli(workdir, '--mode=train', f'--config.data.data_dir={empty}',
                                f'--config.data.tfrecords_path={empty / "missing.tfrecords"}',
                                config=str(REPO / 'configs' / rel)))
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err[-3000:]
  assert lines[0].startswith('error:') and expected in lines[0], lines[0]
  assert not workdir.exists()
