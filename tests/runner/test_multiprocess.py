"""Runs over several processes (jax.distributed, gloo on CPU): two run.py processes with 4 devices each must
train, save and sample as one process with 8 devices does, a run that loses a process must stop, not hang, and a
pre-emption notice to one process must stop both at the same saved step."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import ENV, REPO, TOY

RUN = ['--config.training.n_iters=100', '--config.training.log_freq=10', '--config.training.eval_freq=50',
       '--config.training.snapshot_freq=100', '--config.training.snapshot_freq_for_preemption=10',
       '--config.training.snapshot_sampling=False', '--config.training.batch_size=64',
       '--config.training.n_jitted_steps=10', '--config.model.nf=32']
SAMPLE = ['--config.eval.num_samples=64', '--config.eval.batch_size=64', '--config.model.num_scales=30']


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def command(workdir, mode, extra):
  return [sys.executable, str(REPO / 'run.py'), f'--config={TOY}', f'--workdir={workdir}', f'--mode={mode}', *extra]


def start_one(workdir, mode, extra):
  env = dict(ENV, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  return [subprocess.Popen(command(workdir, mode, extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)]


def start_two(workdir, mode, extra, **more_env):
  env = dict(ENV, XLA_FLAGS='--xla_force_host_platform_device_count=4', SCORE_SDE_HEARTBEAT_TIMEOUT='15',
             SCORE_SDE_SHUTDOWN_TIMEOUT='15', **more_env)
  address = f'127.0.0.1:{free_port()}'
  return [subprocess.Popen(command(workdir, mode, extra) + [f'--coordinator_address={address}', '--num_processes=2',
                                                           f'--process_id={i}'],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def finish(processes, timeout=600):
  results = [p.communicate(timeout=timeout) for p in processes]
  for p, (_, err) in zip(processes, results):
    assert p.returncode == 0, err[-3000:]
  return results


def params(workdir):
  from score_sde.runner import checkpoints
  state = checkpoints.restore(str(workdir))
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves((state.params, state.params_ema))]


def files(workdir):
  """Every file but the checkpoints' own (orbax writes a part per process), TensorBoard's (named by host) and
  process 0's run.log (there only when a library logged something, e.g. a thread's exception at exit)."""
  return sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')
                if p.relative_to(workdir).parts[0] not in ('checkpoints', 'checkpoints-meta', 'tensorboard', 'run.log'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multiprocess')
  finish(start_one(root / 'one', 'train', RUN))
  finish(start_two(root / 'two', 'train', RUN))
  return root


def test_two_processes_train_as_one_process_with_as_many_devices(runs):
  step_one, one = params(runs / 'one')
  step_two, two = params(runs / 'two')
  assert step_one == step_two == 100
  worst = max(float(np.abs(a - b).max()) for a, b in zip(one, two))
  print(f'max |params(1 process x 8 devices) - params(2 processes x 4 devices)| = {worst:.3g}')
  assert worst <= 1e-6


def test_two_processes_write_one_set_of_files(runs):
  assert files(runs / 'two') == files(runs / 'one')
  lines = (runs / 'two' / 'metrics.jsonl').read_text().splitlines()
  assert sum('"loss"' in line for line in lines) == 10  # every log step once, not once per process


def test_two_processes_sample_what_one_process_samples(runs, tmp_path):
  shutil.copytree(runs / 'one', tmp_path / 'a')
  shutil.copytree(runs / 'one', tmp_path / 'b')
  finish(start_one(tmp_path / 'a', 'sample', RUN + SAMPLE))
  finish(start_two(tmp_path / 'b', 'sample', RUN + SAMPLE))
  a = np.load(tmp_path / 'a' / 'samples' / 'samples_step_100.npz')['samples']
  b = np.load(tmp_path / 'b' / 'samples' / 'samples_step_100.npz')['samples']
  assert a.shape == b.shape == (64, 2)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
  assert files(tmp_path / 'b') == files(tmp_path / 'a')


def training_two(workdir, **more_env):
  """Two processes training RUN, once they have logged two losses."""
  processes = start_two(workdir, 'train', RUN, **more_env)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in processes):
    if metrics.exists() and metrics.read_text().count('"loss"') >= 2:
      break
    time.sleep(0.1)
  assert all(p.poll() is None for p in processes), 'the run ended before it could be interrupted'
  return processes


def test_a_lost_process_stops_the_other_and_both_resume_exactly(runs, tmp_path):
  workdir = tmp_path / 'w'
  processes = training_two(workdir)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    processes[0].wait(timeout=120)
  except subprocess.TimeoutExpired:
    processes[0].kill()
    pytest.fail('process 0 still runs 120 s after process 1 died')
  print(f'process 0 stopped {time.time() - killed_at:.1f} s after process 1 was killed '
        f'(exit code {processes[0].returncode})')
  assert processes[0].returncode != 0
  for p in processes:
    p.communicate()
  finish(start_two(workdir, 'train', RUN))
  step, resumed = params(workdir)
  _, reference = params(runs / 'two')
  assert step == 100
  for a, b in zip(reference, resumed):
    np.testing.assert_array_equal(a, b)
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert sum('"loss"' in line for line in lines) == 10


@pytest.mark.parametrize('notice', ['SIGTERM', 'SIGUSR1'])
def test_a_notice_to_one_process_stops_both_at_one_saved_step(tmp_path, notice):
  """SIGTERM goes through JAX's preemption sync point, the SCORE_SDE_PREEMPT_SIGNAL one through the processes'
  shared flag; either way both save the same step and exit 75 (a restart resumes from a checkpoint as after a lost
  process, above)."""
  workdir = tmp_path / 'w'
  processes = training_two(workdir, SCORE_SDE_PREEMPT_SIGNAL='USR1')
  processes[1].send_signal(getattr(signal, notice))
  sent = time.time()
  errs = [p.communicate(timeout=300)[1] for p in processes]
  print(f'{notice} to process 1: exit codes {[p.returncode for p in processes]} after {time.time() - sent:.1f} s')
  assert [p.returncode for p in processes] == [75, 75], [e[-1500:] for e in errs]
  line = errs[0].strip().splitlines()[-1]
  assert line.startswith('pre-empted (') and ' at step ' in line, line
  assert 'pre-empted' not in errs[1]  # only process 0 prints
  step = int(line.split(' at step ')[1].split(':')[0])
  assert sorted(p.name for p in (workdir / 'checkpoints-meta').iterdir()) == [str(step)] and 20 <= step < 100


def test_flags_must_come_together(tmp_path):
  result = subprocess.run(command(tmp_path / 'w', 'train', ['--num_processes=2']), env=ENV, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and 'go together' in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / 'w')
