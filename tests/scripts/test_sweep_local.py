"""experiments/sweep.py with real run.py trials on submitit's LocalExecutor: the same table as the serial launcher,
and a trial stopped by its time limit that saves, is requeued and resumes from its checkpoint."""
import json
import sys
import textwrap

from helpers import REPO
sys.path.insert(0, str(REPO))
from experiments import sweep  # pylint: disable=wrong-import-position

TOY_TRIAL = {'training.n_jitted_steps': 10, 'training.log_freq': 10, 'training.eval_freq': 50,
             'training.snapshot_freq': 50, 'training.snapshot_freq_for_preemption': 50,
             'training.snapshot_sampling': False, 'training.batch_size': 64, 'model.nf': 32}


def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return str(path)


def test_serial_and_local_give_the_same_table(tmp_path):
  """Two trials of 50 steps, one after another here, then as two parallel LocalExecutor jobs."""
  path = write(tmp_path, 'two.py', f'''\
      def get_sweep():
        return {{'config': 'configs/toy/gmm.py', 'modes': ['train'], 'grid': {{'optim.lr': [2e-3, 1e-3]}},
                'overrides': {{**{TOY_TRIAL!r}, 'training.n_iters': 50}}, 'metrics': ['loss', 'eval_loss']}}
  ''')
  tables = {}
  for launcher in ('serial', 'local'):
    out = tmp_path / launcher
    assert sweep.main(['--sweep', path, '--out', str(out), '--launcher', launcher, '--max_parallel', '2']) == 0
    tables[launcher] = (out / 'results.md').read_text(), (out / 'results.csv').read_text()
  print('\n'.join(f'{launcher}:\n{md}' for launcher, (md, _) in tables.items()))
  assert tables['serial'] == tables['local'] and tables['serial'][0].count('| ok |') == 2


def test_a_trial_stopped_by_its_time_limit_saves_is_requeued_and_resumes(tmp_path):
  """A local time limit of 45 s: submitit sends USR2 30 s before it, the trial passes it on to run.py, which saves
  the step it is on and exits 75, and the requeued trial resumes there. The training never ends, so this happens
  again, and after one requeue (local_max_num_timeout=1) submitit gives up; the sweep reports the trial as
  pre-empted (running it again would resume)."""
  path = write(tmp_path, 'endless.py', f'''\
      def get_sweep():
        return {{'config': 'configs/toy/gmm.py', 'modes': ['train'], 'grid': {{'optim.lr': [2e-3]}},
                'overrides': {{**{TOY_TRIAL!r}, 'training.n_iters': 10 ** 7}}, 'metrics': ['loss']}}
  ''')
  limit = write(tmp_path, 'limit.py', '''\
      def get_launcher():
        return {'local_timeout_min': 0.75, 'local_max_num_timeout': 1}
  ''')
  out = tmp_path / 'out'
  assert sweep.main(['--sweep', path, '--out', str(out), '--launcher', 'local', '--launcher_config', limit]) == 1
  trial = out / 'lr-0.002'
  status = json.loads((trial / 'status.json').read_text())
  assert status['status'] == 'preempted' and 'timed-out too many times' in status['error'], status
  stops = [line for line in (trial / 'logs' / 'train.err').read_text().splitlines() if line.startswith('pre-empted')]
  steps = [int(line.split(' at step ')[1].split(':')[0]) for line in stops]
  print('time-limit stops:', *stops, sep='\n  ')
  assert len(stops) == 2 and all('(SIGUSR2)' in line for line in stops) and 1 <= steps[0] < steps[1]
  starts = [line for line in (trial / 'logs' / 'train.out').read_text().splitlines() if line.startswith('Training')]
  assert 'starting from scratch' in starts[0] and f'resuming from step {steps[0]}' in starts[1]
  assert (trial / 'checkpoints-meta' / str(steps[1])).is_dir()
  metrics = trial / 'metrics.jsonl'  # absent when neither attempt got to step 10 (a slow machine)
  entries = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
  logged = [m['step'] for m in entries if 'loss' in m]  # each training loss once: the resume cut what came after
  assert logged == sorted(set(logged))
