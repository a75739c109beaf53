"""experiments/: grid expansion, trial names, printed commands, tables and plots, failures and resume, launchers.

No JAX runs: results are fake JSON files, and a fake run.py stands in for training where a run must succeed.
SLURM is a stub: sbatch records the script submitit generates, and the test runs that script as SLURM would.
"""
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from helpers import REPO
sys.path.insert(0, str(REPO))
from experiments import launchers, likelihood_eval, results, sweep, workdir_config

SWEEPS = REPO / 'experiments' / 'sweeps'
FAKE_RUN = textwrap.dedent('''\
    """Stands in for run.py: --config.fake.bpd=<x> writes likelihood.json, --config.fake.bpd=fail exits 2."""
    import json, os, sys
    args = dict(a.split('=', 1) for a in sys.argv[1:] if a.startswith('--config.'))
    workdir = sys.argv[sys.argv.index('--workdir') + 1]
    with open(os.environ['FAKE_RUN_LOG'], 'a') as f:
      f.write(json.dumps(sys.argv[1:]) + '\\n')
    if args.get('--config.fake.bpd') == 'fail':
      print('some progress', file=sys.stderr)
      print('error: fake failure', file=sys.stderr)
      sys.exit(2)
    os.makedirs(workdir, exist_ok=True)
    bpd = float(args.get('--config.fake.bpd', 1.5))
    with open(os.path.join(workdir, 'likelihood.json'), 'w') as f:
      json.dump({'step': 10, 'bpd_mean': bpd, 'bpd_stderr': 0.01, 'num_examples': 4, 'dataset': 'gmm'}, f)
''')


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def write_sweep(tmp_path, body):
  path = tmp_path / 'my_sweep.py'
  path.write_text(f'def get_sweep():\n  return {body!r}\n')
  return str(path)


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
  script = tmp_path / 'fake_run.py'
  script.write_text(FAKE_RUN)
  log = tmp_path / 'calls.jsonl'
  monkeypatch.setattr(sweep, 'RUN_PY', str(script))
  monkeypatch.setenv('FAKE_RUN_LOG', str(log))
  return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_grid_expansion_names_and_overrides():
  s = sweep.load_sweep(SWEEPS / 'quickstart_sampler.py')
  trials = sweep.expand(s)
  assert [name for name, _ in trials] == [f'snr-{snr}_num_scales-{n}' for snr in ('0.08', '0.16')
                                          for n in (25, 100, 250)]
  assert trials[2][1] == {'sampling.snr': 0.08, 'model.num_scales': 250}
  flags = sweep.override_flags(s, trials[0][1])
  assert '--config.eval.enable_bpd=False' in flags and '--config.sampling.corrector=langevin' in flags
  assert flags[-2:] == ['--config.sampling.snr=0.08', '--config.model.num_scales=25']

  toy = sweep.load_sweep(SWEEPS / 'toy_sdes.py')
  by_name = dict(sweep.expand(toy))
  assert list(by_name) == ['sde-vesde', 'sde-vpsde', 'sde-subvpsde']
  ve = sweep.override_flags(toy, by_name['sde-vesde'])
  assert '--config.model.embedding_type=fourier' in ve and '--config.model.scale_by_sigma=True' in ve
  assert not any('embedding_type' in f for f in sweep.override_flags(toy, by_name['sde-vpsde']))


def test_trial_names_are_filesystem_safe_and_unique():
  s = sweep.check_sweep({'config': 'configs/toy/gmm.py', 'modes': ['train'],
                         'grid': {'config.model.sigma_max': [1e-5, 50.], 'data.dataset': ['a/b c', '../x'],
                                  'model.ch_mult': [(1, 2)], 'training.sigma_max': [True]}})
  names = [name for name, _ in sweep.expand(s)]
  assert len(set(names)) == 4
  for name in names:
    assert re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._+-]*', name), name
  assert names[0] == 'model.sigma_max-1e-05_dataset-a_b_c_ch_mult-1_2_training.sigma_max-True'
  with pytest.raises(sweep.SweepError, match='named'):
    sweep.expand(sweep.check_sweep({'config': 'configs/toy/gmm.py', 'modes': ['train'],
                                    'grid': {'data.dataset': ['a b', 'a/b']}}))
  with pytest.raises(sweep.SweepError, match='shared workdir'):
    sweep.check_sweep({'config': 'configs/quickstart.py', 'modes': ['train'], 'workdir': 'runs/x'})
  with pytest.raises(sweep.SweepError, match='plot'):
    sweep.check_sweep({'config': 'configs/quickstart.py', 'modes': ['eval'], 'grid': {'a.b': [1]},
                       'metrics': ['fid'], 'plot': {'x': 'a.c', 'y': 'fid'}})
  as_config = ml_collections.ConfigDict({'config': 'configs/toy/gmm.py', 'modes': ['train'], 'metrics': ['loss']})
  assert sweep.check_sweep(as_config)['metrics'] == ['loss']


def test_print_commands_are_runnable_shell(capsys, tmp_path):
  out = tmp_path / 'out'
  assert sweep.main(['--sweep', str(SWEEPS / 'quickstart_sampler.py'), '--print_commands', '--out', str(out),
                     '--config.eval.batch_size=32']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 6
  for line, snr, steps in zip(lines, ['0.08'] * 3 + ['0.16'] * 3, ['25', '100', '250'] * 2):
    words = shlex.split(line)
    assert words[:3] == ['cd', str(REPO), '&&'] and '&&' not in words[3:]
    argv = words[3:]
    assert argv[:2] == [sys.executable, 'run.py']
    assert argv[argv.index('--mode') + 1] == 'eval' and argv[argv.index('--workdir') + 1] == 'runs/quickstart'
    assert argv[argv.index('--eval_folder') + 1] == f'eval_quickstart_sampler_snr-{snr}_num_scales-{steps}'
    assert f'--config.sampling.snr={snr}' in argv and f'--config.model.num_scales={steps}' in argv
    assert argv[-1] == '--config.eval.batch_size=32'
  assert not out.exists()  # nothing ran

  assert sweep.main(['--sweep', str(SWEEPS / 'toy_sdes.py'), '--print_commands', '--out', str(out)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3
  words = shlex.split(lines[0])
  runs = ' '.join(words[3:]).split(' && ')
  assert [r.split('--mode ')[1].split()[0] for r in runs] == ['train', 'eval']
  assert all(f'--workdir {out}/sde-vesde' in r and '--config.training.sde=vesde' in r for r in runs)


def test_collect_table_and_plot_from_result_files(tmp_path):
  shared = tmp_path / 'trained'
  fids = {(0.08, 100): 30., (0.08, 250): 20., (0.16, 100): 25.}  # (0.16, 250) has not run
  for (snr, steps), fid in fids.items():
    folder = shared / f'eval_s_snr-{snr}_num_scales-{steps}'
    folder.mkdir(parents=True)
    entry = {'step': 1500, 'fid': {'mean': fid, 'stderr': 0.5}, 'kid': {'mean': 0.01, 'stderr': 0.002},
             'nfe': 2 * steps, 'num_samples': 256, 'feature_extractor': 'digits'}
    old = {**entry, 'step': 500, 'fid': {'mean': 99., 'stderr': 1.}}
    (folder / 'eval_results.json').write_text(json.dumps({'checkpoints': {'500': old, '1500': entry}}))
  grid = {'sampling.snr': [0.08, 0.16], 'model.num_scales': [100, 250]}
  path = write_sweep(tmp_path, {'name': 's', 'config': 'configs/quickstart.py', 'workdir': str(shared),
                                'modes': ['eval'], 'grid': grid,
                                'metrics': ['fid', 'kid', 'nfe', 'bpd'],
                                'plot': {'x': 'model.num_scales', 'series': 'sampling.snr', 'y': 'fid'}})
  out = tmp_path / 'out'
  assert sweep.main(['--sweep', path, '--out', str(out), '--only_collect']) == 0
  rows = read_csv(out / 'results.csv')
  assert rows[0]['trial'] == 'snr-0.08_num_scales-100'
  assert [float(r['fid']) for r in rows[:3]] == [30., 20., 25.]   # the newest checkpoint's
  assert rows[1]['nfe'] == '500' and rows[0]['fid_stderr'] == '0.5' and rows[0]['bpd'] == ''
  assert [r['status'] for r in rows] == ['ok', 'ok', 'ok', 'not run']
  table = (out / 'results.md').read_text()
  assert '| trial | snr | num_scales | fid | kid | nfe | bpd | status |' in table
  assert '| snr-0.08_num_scales-250 | 0.08 | 250 | 20 ± 0.5 | 0.01 ± 0.002 | 500 |  | ok |' in table
  assert (out / 'plot.png').read_bytes()[:4] == b'\x89PNG'

  # likelihood.json's bpd_mean / bpd_stderr, and metrics.jsonl's latest values
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'likelihood.json').write_text(json.dumps({'step': 7, 'bpd_mean': 2.04, 'bpd_stderr': 0.02}))
  (run / 'metrics.jsonl').write_text('{"step": 5, "loss": 0.3}\n{"step": 5, "eval_loss": 0.4}\n{"step": 7, "lo')
  merged = {**results.mode_results('train', str(run)), **results.mode_results('likelihood', str(run))}
  assert results.metric(merged, 'bpd') == (2.04, 0.02) and results.metric(merged, 'loss') == (0.3, None)
  assert results.metric(merged, 'eval_loss') == (0.4, None) and merged['step'] == 7
  assert results.fmt(2.04, 0.02) == '2.04 ± 0.02' and results.fmt(2.04, float('nan')) == '2.04'


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
  """The real run.py: a misspelled override exits 2 in well under a second, before any compile."""
  path = write_sweep(tmp_path, {'config': 'configs/toy/gmm.py', 'modes': ['train', 'likelihood'],
                                'grid': {'model.no_such_field': [1, 2]}, 'metrics': ['bpd'],
                                'plot': {'x': 'model.no_such_field', 'y': 'bpd'}})
  out = tmp_path / 'out'
  assert sweep.main(['--sweep', path, '--out', str(out)]) == 1
  for name in ('no_such_field-1', 'no_such_field-2'):
    status = json.loads((out / name / 'status.json').read_text())
    assert status['status'] == 'failed' and status['mode'] == 'train' and status['returncode'] == 2
    assert "unknown config field 'model.no_such_field'" in status['error'] and 'likelihood' not in status['seconds']
  table = (out / 'results.md').read_text()
  assert table.count('failed (train, exit 2): error: unknown config field') == 2
  assert (out / 'plot.png').exists()


@pytest.mark.parametrize('launcher', ['serial', 'local'])
def test_resume_skips_finished_trials_and_reruns_failed_ones(tmp_path, fake_run, launcher):
  path = write_sweep(tmp_path, {'config': 'configs/toy/gmm.py', 'modes': ['likelihood'],
                                'grid': {'fake.bpd': [1.0, 'fail', 2.0]}, 'metrics': ['bpd'],
                                'plot': {'x': 'fake.bpd', 'y': 'bpd'}})
  out = tmp_path / 'out'
  how = ['--launcher', launcher, '--max_parallel', '2']
  assert sweep.main(['--sweep', path, '--out', str(out), *how]) == 1
  assert len(fake_run()) == 3
  rows = read_csv(out / 'results.csv')
  assert [(r['bpd'], r['status']) for r in rows] == [('1.0', 'ok'), ('', 'failed'), ('2.0', 'ok')]
  assert rows[1]['error'] == 'error: fake failure'

  assert sweep.main(['--sweep', path, '--out', str(out), *how]) == 1   # a killed or repeated sweep
  calls = fake_run()
  assert len(calls) == 4 and '--config.fake.bpd=fail' in calls[-1]
  assert sweep.main(['--sweep', path, '--out', str(out), *how, '--config.x.y=1']) == 1  # new overrides: all again
  assert len(fake_run()) == 7


class FakeJob:
  """Finishes after `polls` calls of done(); counts how many of its kind run at once."""
  running, most = 0, 0

  def __init__(self, polls):
    self.polls = polls
    FakeJob.running += 1
    FakeJob.most = max(FakeJob.most, FakeJob.running)

  def done(self):
    self.polls -= 1
    if self.polls == 0:
      FakeJob.running -= 1
    return self.polls <= 0


def test_local_runs_at_most_max_parallel_trials_at_once():
  events = list(launchers.at_most(2, [3, 1, 2, 1, 1], FakeJob, poll_seconds=0))
  assert FakeJob.most == 2 and FakeJob.running == 0
  assert sorted(item for event, item, _ in events if event == 'finished') == [1, 1, 1, 2, 3]
  assert [event for event, _, _ in events].count('started') == 5


def test_launcher_flags_and_configs_are_checked_in_one_line(tmp_path, capsys):
  base = ['--sweep', str(SWEEPS / 'toy_sdes.py'), '--out', str(tmp_path / 'out')]
  assert sweep.main(base + ['--launcher', 'print']) == 0
  printed = capsys.readouterr().out
  assert sweep.main(base + ['--print_commands']) == 0
  assert capsys.readouterr().out == printed and printed.count('run.py') == 6
  bad_config = tmp_path / 'bad.py'
  bad_config.write_text("def get_launcher():\n  return {'slurm_partitoin': 'gpu'}\n")
  for args, expected in [(['--launcher', 'lokal'], "--launcher='lokal' is unknown; known: ['local', 'print', "),
                         (['--print_commands', '--launcher', 'local'], '--print_commands is --launcher print'),
                         (['--launcher_config', str(bad_config)], 'is for --launcher local or slurm'),
                         (['--launcher', 'local', '--max_parallel', '0'], 'must be at least 1'),
                         (['--launcher', 'local', '--launcher_config', str(tmp_path / 'none.py')],
                          'no launcher config'),
                         (['--launcher', 'local', '--launcher_config', str(bad_config)],
                          "Unknown argument 'partitoin' for executor 'slurm'")]:
    assert sweep.main(base + args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], (args, err)
  assert not (tmp_path / 'out').exists()


STUBS = {  # what submitit calls on a SLURM cluster, recorded or answered from files in $STUB_RECORD
    'sbatch': 'n=$(ls "$STUB_RECORD" | grep -c "^sbatch_")\ncp "$1" "$STUB_RECORD/sbatch_$n.sh"\n'
              'echo "Submitted batch job $((4242 + n))"\n',
    'sacct': 'echo "JobID|State|NodeList"\ncat "$STUB_RECORD/sacct.txt"\n',
    # runs the task's command as srun would, with the step's variables
    'srun': 'while [[ "$1" == --* ]]; do case "$1" in --output|--error) shift 2;; *) shift;; esac; done\n'
            'export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1\n'
            'exec "$@"\n',
}


@pytest.fixture
def slurm(tmp_path, monkeypatch):
  """The folder where the stubbed SLURM commands (on PATH for this test) record what they are given."""
  bin_dir, record = tmp_path / 'bin', tmp_path / 'record'
  bin_dir.mkdir()
  record.mkdir()
  for name, body in STUBS.items():
    (bin_dir / name).write_text('#!/bin/bash\n' + body)
    (bin_dir / name).chmod(0o755)
  monkeypatch.setenv('PATH', f"{bin_dir}:{os.environ['PATH']}")
  monkeypatch.setenv('STUB_RECORD', str(record))
  return record


def test_slurm_submits_one_array_and_a_rerun_collects_leaves_running_and_resubmits_failed(tmp_path, fake_run, slurm):
  record = slurm
  config = tmp_path / 'cluster.py'
  config.write_text(textwrap.dedent(f'''\
      def get_launcher():
        return {{'slurm_partition': 'gpu', 'timeout_min': 90, 'gpus_per_node': 2, 'cpus_per_task': 6, 'mem_gb': 16,
                'slurm_signal_delay_s': 100, 'slurm_additional_parameters': {{'requeue': True}},
                'slurm_setup': ['touch {tmp_path}/setup_ran']}}
  '''))
  path = write_sweep(tmp_path, {'config': 'configs/toy/gmm.py', 'modes': ['likelihood'],
                                'grid': {'fake.bpd': [1.0, 'fail']}, 'metrics': ['bpd']})
  out = tmp_path / 'out'
  args = ['--sweep', path, '--out', str(out), '--launcher', 'slurm', '--launcher_config', str(config),
          '--max_parallel', '1']
  assert sweep.main(args) == 0 and not fake_run()
  script = (record / 'sbatch_0.sh').read_text()
  lines = script.splitlines()
  for flag in ('--array=0-1%1', '--partition=gpu', '--time=90', '--gpus-per-node=2', '--cpus-per-task=6',
               '--mem=16GB', '--signal=USR2@100', '--requeue', '--job-name=out'):
    assert f'#SBATCH {flag}' in lines, flag
  setup = lines.index(f'touch {tmp_path}/setup_ran')
  assert lines[setup + 1:setup + 3] == [f'cd {REPO}', f'export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}']
  assert subprocess.run(['bash', '-n', str(record / 'sbatch_0.sh')], check=False).returncode == 0
  jobs = [json.loads((out / name / 'status.json').read_text()) for name in ('bpd-1.0', 'bpd-fail')]
  assert [(j['status'], j['job_id']) for j in jobs] == [('submitted', '4242_0'), ('submitted', '4242_1')]

  (record / 'sacct.txt').write_text('4242_0|RUNNING|n1\n4242_1|PENDING|\n')
  assert sweep.main(args) == 0  # both still queued or running: nothing submitted twice
  assert sorted(p.name for p in record.glob('sbatch_*')) == ['sbatch_0.sh']

  for task in (0, 1):  # SLURM runs the array's tasks
    subprocess.run(['bash', str(record / 'sbatch_0.sh')], check=False, capture_output=True,
                   env=dict(os.environ, SLURM_JOB_ID=str(5000 + task), SLURM_ARRAY_JOB_ID='4242',
                            SLURM_ARRAY_TASK_ID=str(task)))
  assert len(fake_run()) == 2 and (tmp_path / 'setup_ran').exists()
  assert json.loads((out / 'bpd-fail' / 'status.json').read_text())['status'] == 'failed'

  assert sweep.main(args) == 0  # the finished trial is collected, the failed one submitted again
  rows = read_csv(out / 'results.csv')
  assert [(r['bpd'], r['status']) for r in rows] == [('1.0', 'ok'), ('', 'submitted')]
  again = (record / 'sbatch_1.sh').read_text()
  assert '--array' not in again and json.loads((out / 'bpd-fail' / 'status.json').read_text())['job_id'] == '4243'


def test_likelihood_eval_passes_overrides_and_tabulates(tmp_path, fake_run, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  out = tmp_path / 'table'
  code = likelihood_eval.main(['--workdir', 'a', '--workdir', 'b', '--config', str(REPO / 'configs' / 'toy' / 'gmm.py'),
                               '--config.fake.bpd=3.25', '--config.eval.likelihood_rtol=0.001', '--out', str(out)])
  assert code == 0
  calls = fake_run()
  assert len(calls) == 2 and all('--config.eval.likelihood_rtol=0.001' in c and 'likelihood' in c for c in calls)
  assert [c[c.index('--workdir') + 1] for c in calls] == [str(tmp_path / 'a'), str(tmp_path / 'b')]
  table = (out / 'likelihood.md').read_text()
  assert '3.25 ± 0.01' in table and table.count('| ok |') == 2
  assert read_csv(out / 'likelihood.csv')[0]['bpd'] == '3.25'
  assert '3.25 ± 0.01' in capsys.readouterr().out
  # without --config, the run's own config.json: through experiments/workdir_config.py
  assert likelihood_eval.command('runs/x', None, [])[3] == 'experiments/workdir_config.py:runs/x'


def test_workdir_config_rebuilds_the_saved_config(tmp_path):
  from configs.toy import gmm
  from score_sde import config_table
  config = config_table.with_defaults(gmm.get_config())
  config.model.ch_mult = (1, 2)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  assert workdir_config.get_config(str(tmp_path)).to_dict() == config.to_dict()


@pytest.mark.parametrize('name,flags', [
    ('slurm_example', ['--nodes=1', '--ntasks-per-node=1', '--gpus-per-node=1', '--signal=USR2@120', '--requeue']),
    ('slurm_multinode', ['--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8', '--signal=USR2@300', '--requeue'])])
def test_the_shipped_launcher_configs_make_valid_sbatch_scripts(tmp_path, fake_run, slurm, name, flags):
  path = write_sweep(tmp_path, {'config': 'configs/toy/gmm.py', 'modes': ['likelihood'], 'grid': {'fake.bpd': [1., 2.]},
                                'metrics': ['bpd']})
  assert sweep.main(['--sweep', path, '--out', str(tmp_path / 'out'), '--launcher', 'slurm', '--launcher_config',
                     str(REPO / 'launchers' / f'{name}.py')]) == 0
  script = slurm / 'sbatch_0.sh'
  lines = script.read_text().splitlines()
  assert all(f'#SBATCH {flag}' in lines for flag in flags + ['--array=0-1%2']), lines
  assert f'cd {REPO}' in lines and subprocess.run(['bash', '-n', str(script)], check=False).returncode == 0
