"""experiments/: grid expansion, trial names, printed commands, tables and plots, failures and resume.

No JAX runs: results are fake JSON files, and a fake run.py stands in for training where a run must succeed.
"""
import csv
import json
import pathlib
import re
import shlex
import sys
import textwrap

import ml_collections
import pytest

from helpers import REPO
sys.path.insert(0, str(REPO))
from experiments import likelihood_eval, results, sweep, workdir_config

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


def test_resume_skips_finished_trials_and_reruns_failed_ones(tmp_path, fake_run):
  path = write_sweep(tmp_path, {'config': 'configs/toy/gmm.py', 'modes': ['likelihood'],
                                'grid': {'fake.bpd': [1.0, 'fail', 2.0]}, 'metrics': ['bpd'],
                                'plot': {'x': 'fake.bpd', 'y': 'bpd'}})
  out = tmp_path / 'out'
  assert sweep.main(['--sweep', path, '--out', str(out)]) == 1
  assert len(fake_run()) == 3
  rows = read_csv(out / 'results.csv')
  assert [(r['bpd'], r['status']) for r in rows] == [('1.0', 'ok'), ('', 'failed'), ('2.0', 'ok')]
  assert rows[1]['error'] == 'error: fake failure'

  assert sweep.main(['--sweep', path, '--out', str(out)]) == 1   # a killed or repeated sweep
  calls = fake_run()
  assert len(calls) == 4 and '--config.fake.bpd=fail' in calls[-1]
  assert sweep.main(['--sweep', path, '--out', str(out), '--config.x.y=1']) == 1  # new overrides: all run again
  assert len(fake_run()) == 7


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
