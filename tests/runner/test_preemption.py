"""Pre-emption and failing writes, through run.py: a notice saves and exits 75, a restart is bit-identical; a write
that fails is one `error:` line with the errno text, keeps the last good checkpoint and is cleaned up on restart."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ENV, REPO, SMALL, Watched, final_params, run_cli
from score_sde.runner import log_file, preemption, write_errors


# --- the notice itself (no run) --------------------------------------------------------------------------------

def test_signal_names_and_a_bad_one():
  assert preemption.signal_named('USR1') == signal.SIGUSR1 == preemption.signal_named('sigusr1')
  assert preemption.signal_named(str(int(signal.SIGUSR2))) == signal.SIGUSR2
  assert preemption.Preemption.from_environment({}).signals == (signal.SIGTERM,)
  assert preemption.Preemption.from_environment({'SCORE_SDE_PREEMPT_SIGNAL': 'USR2'}).signals == (
      signal.SIGTERM, signal.SIGUSR2)
  for bad in ('USR3', 'KILL', 'SIGSTOP'):
    with pytest.raises(ValueError, match='SCORE_SDE_PREEMPT_SIGNAL'):
      preemption.signal_named(bad)


def test_a_notice_is_recorded_once_and_an_uninstalled_one_never_stops():
  notices = preemption.Preemption((signal.SIGUSR1,))
  assert not notices.at_sync() and not notices.at_step(1)
  notices.install()
  try:
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.01)  # the handler runs between bytecodes of this thread
    os.kill(os.getpid(), signal.SIGUSR1)
    assert notices.received == 'SIGUSR1' and notices.at_step(1) and notices.at_sync()
  finally:
    notices.uninstall()
  assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_bad_signal_name_exits_2_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, str(REPO / 'run.py'), '--config=configs/toy/gmm.py', f'--workdir={tmp_path}/w',
                         '--mode=train'], cwd=REPO, env=dict(ENV, SCORE_SDE_PREEMPT_SIGNAL='USR3'),
                        capture_output=True, text=True, timeout=120)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1 and "SCORE_SDE_PREEMPT_SIGNAL='USR3'" in lines[0], done.stderr
  assert not (tmp_path / 'w').exists()


def test_write_errors_name_the_file_and_the_errno():
  assert write_errors.reason(ValueError("OUT_OF_RANGE: Failed to write 243515 bytes to file 7: File too large "
                                        "[os_error_code='27']")) == 'File too large (EFBIG)'
  try:
    try:
      raise OSError(28, 'No space left on device')
    except OSError as inner:
      raise RuntimeError('orbax: save failed') from inner
  except RuntimeError as outer:
    assert write_errors.reason(outer) == 'No space left on device (ENOSPC)'
  assert write_errors.describe(OSError(122, 'Disk quota exceeded', '/r/metrics.jsonl')) == (
      'cannot write /r/metrics.jsonl: Disk quota exceeded (EDQUOT)')
  assert write_errors.describe(ValueError('x')) is None


def test_an_atomic_write_that_fails_names_the_target_file(tmp_path):
  from score_sde import atomic_files
  target = tmp_path / 'out.json'
  target.write_text('old')
  with pytest.raises(OSError) as caught:
    with atomic_files.replacing(str(target)) as f:
      f.write('new')
      raise OSError(27, 'File too large')
  assert caught.value.filename == str(target) and target.read_text() == 'old'
  assert [p.name for p in tmp_path.iterdir()] == ['out.json']
  with pytest.raises(log_file.RunFailed, match=r'^cannot write .*out\.json: File too large \(EFBIG\) \(traceback'):
    with log_file.tracebacks_to(str(tmp_path / 'run.log')):
      raise caught.value


# --- training ------------------------------------------------------------------------------------------------------

def test_sigterm_at_a_random_step_saves_that_step_exits_75_and_resumes_bit_for_bit(reference_run, tmp_path):
  """The reference's run with no checkpoint before the last step, so that the step saved on SIGTERM comes from
  the pre-emption alone (checkpoints do not change the trajectory)."""
  workdir = tmp_path / 'w'
  rare = [*SMALL, '--config.training.snapshot_freq=1000', '--config.training.snapshot_freq_for_preemption=1000']
  run = Watched(workdir, '--mode=train', *rare)
  run.wait_for('train: 10/300')
  time.sleep(random.uniform(0., 1.))
  sent = time.time()
  while run.process.poll() is None:  # SIGTERM again every 0.2 s until it exits: some land during the save
    run.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
  code, seconds = run.finish(), time.time() - sent
  messages = run.messages()
  assert code == preemption.EXIT_CODE and len(messages) == 1, run.lines[-10:]
  assert messages[0].startswith('pre-empted (SIGTERM) at step ') and 'Traceback' not in '\n'.join(run.lines)
  step = int(messages[0].split(' at step ')[1].split(':')[0])
  assert 10 <= step < 300 and [p.name for p in (workdir / 'checkpoints-meta').iterdir()] == [str(step)]
  assert not (workdir / 'checkpoints').exists() or not any((workdir / 'checkpoints').iterdir())
  assert final_params(workdir)[2] == step

  restart = Watched(workdir, '--mode=train', *rare)
  assert restart.finish() == 0, restart.lines[-10:]
  assert f'resuming from step {step}' in restart.out[0]
  reference, resumed = final_params(reference_run), final_params(workdir)
  worst = max(float(np.abs(a - b).max()) for a, b in zip(reference[0] + reference[1], resumed[0] + resumed[1]))
  print(f'SIGTERM: exit {code} after {seconds:.1f} s, saved step {step}; restart: max |params - uninterrupted| = '
        f'{worst}')
  assert resumed[2] == 300 and worst == 0.
  logged = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()
            if '"loss"' in line]
  assert logged == list(range(10, 301, 10))


def test_a_failing_write_is_one_line_keeps_the_last_checkpoint_and_the_restart_cleans_up(reference_run, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(reference_run, workdir)
  more = [*SMALL, '--config.training.n_iters=320']
  run = Watched(workdir, '--mode=train', *more, ulimit_kb=40)  # the step-310 snapshot is larger than 40 KB
  code = run.finish()
  messages = run.messages()
  print('a failing write printed:', *messages, sep='\n  ')
  assert code == 1 and len(messages) == 1, run.lines[-20:]
  assert messages[0].startswith(f'error: cannot write the checkpoint of step 310 to {workdir}/checkpoints-meta: '
                                'File too large (EFBIG); the last good checkpoint (step 300) is kept')
  assert f'(traceback in {workdir}/run.log)' in messages[0] and 'Traceback' not in '\n'.join(run.lines)
  assert 'Traceback' in (workdir / 'run.log').read_text()
  unfinished = [p.name for p in (workdir / 'checkpoints-meta').iterdir() if not p.name.isdigit()]
  assert unfinished and all(name.startswith('310.orbax-checkpoint-tmp') for name in unfinished)
  assert final_params(workdir)[2] == 300

  restart = Watched(workdir, '--mode=train', *more)
  assert restart.finish() == 0, restart.lines[-10:]
  assert restart.out[0].startswith(f'Removed {workdir}/checkpoints-meta/310.orbax-checkpoint-tmp')
  assert 'resuming from step 300' in restart.out[1]
  assert sorted(p.name for p in (workdir / 'checkpoints-meta').iterdir()) == ['320']
  assert final_params(workdir)[2] == 320


# --- eval, sample, likelihood --------------------------------------------------------------------------------------

EVAL = [*SMALL, '--config.eval.begin_ckpt=3', '--config.eval.end_ckpt=3', '--config.eval.enable_bpd=False',
        '--config.eval.enable_loss=False']  # 4 sampling rounds of 1,000 points


def test_eval_stops_after_the_round_it_is_on_and_resumes_from_it(reference_run, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(reference_run, workdir)
  stats = f'--config.eval.stats_dir={tmp_path}/stats'
  run = Watched(workdir, '--mode=eval', *EVAL, stats)
  run.wait_for('eval 300: sampling: 1/4')
  run.process.send_signal(signal.SIGTERM)
  assert run.finish() == preemption.EXIT_CODE, run.lines[-10:]
  message = run.messages()[-1]
  assert message.startswith('pre-empted (SIGTERM) after writing ') and '/ckpt_300/samples_' in message, message
  done = sorted((workdir / 'eval' / 'ckpt_300').glob('samples_*.npz'))
  assert 1 <= len(done) < 4 and not (workdir / 'eval' / 'eval_results.json').exists()

  restart = Watched(workdir, '--mode=eval', *EVAL, stats)
  assert restart.finish() == 0, restart.lines[-10:]
  results = json.loads((workdir / 'eval' / 'eval_results.json').read_text())['checkpoints']['300']
  assert results['sampling_rounds_run_now'] == 4 - len(done) and results['num_samples'] == 4000


def test_sample_and_likelihood_exit_75_and_write_nothing(reference_run, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(reference_run, workdir)
  runs = {mode: Watched(workdir, f'--mode={mode}', *SMALL) for mode in ('sample', 'likelihood')}
  for mode, run in runs.items():
    run.wait_for(f'{mode}: 1/4')
    run.process.send_signal(signal.SIGTERM)
  for mode, run in runs.items():
    assert run.finish() == preemption.EXIT_CODE, (mode, run.lines[-10:])
    assert run.messages()[-1].startswith('pre-empted (SIGTERM) after ') and 'nothing was written' in run.lines[-1]
  assert not (workdir / 'samples').exists() and not (workdir / 'likelihood.json').exists()
