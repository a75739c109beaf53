"""The multi-node sbatch script of docs/scaling.md, run as SLURM would run it, with srun and scontrol stubbed: it
starts run.py once per task with the pre-emption signal set, and requeues the job when run.py exits 75."""
import os
import re
import shlex
import subprocess

import pytest

from helpers import REPO

STUBS = {
    # records its arguments and the variables run.py reads, then exits as the tasks did ($STUB_EXIT)
    'srun': 'echo "$@" > "$STUB_RECORD/srun.txt"\n'
            'echo "$SCORE_SDE_PREEMPT_SIGNAL $JAX_COORDINATOR_PORT" > "$STUB_RECORD/srun_env.txt"\n'
            'exit "$STUB_EXIT"\n',
    'scontrol': 'echo "$@" >> "$STUB_RECORD/scontrol.txt"\n',
}


def documented_script():
  blocks = re.findall(r'```bash\n(#!/bin/bash\n.*?)```', (REPO / 'docs' / 'scaling.md').read_text(), re.S)
  scripts = [b for b in blocks if '#SBATCH' in b]
  assert len(scripts) == 1, 'docs/scaling.md should print one sbatch script'
  return scripts[0]


@pytest.fixture
def script(tmp_path):
  path = tmp_path / 'train.sbatch'
  path.write_text(documented_script())
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, body in STUBS.items():
    (bin_dir / name).write_text('#!/bin/bash\n' + body)
    (bin_dir / name).chmod(0o755)
  return path


def submit(script, tmp_path, tasks_exit):
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", STUB_RECORD=str(tmp_path),
             STUB_EXIT=str(tasks_exit), SLURM_JOB_ID='123456')
  return subprocess.run(['bash', str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_the_script_parses_and_asks_for_one_task_per_gpu(script):
  assert subprocess.run(['bash', '-n', str(script)], check=False).returncode == 0
  options = dict(line.split()[1].lstrip('-').split('=', 1) if '=' in line else (line.split()[1].lstrip('-'), True)
                 for line in script.read_text().splitlines() if line.startswith('#SBATCH'))
  assert options['ntasks-per-node'] == options['gpus-per-node'] == '8'
  assert options['requeue'] is True and options['signal'] == 'USR1@300' and 'gpus-per-task' not in options


@pytest.mark.parametrize('tasks_exit', [75, 0, 1])
def test_the_script_requeues_exactly_when_run_py_exits_75(script, tmp_path, tasks_exit):
  done = submit(script, tmp_path, tasks_exit)
  assert done.returncode == tasks_exit, done.stderr
  argv = shlex.split((tmp_path / 'srun.txt').read_text())
  assert argv[:2] == ['python', 'run.py'] and argv[argv.index('--mode') + 1] == 'train'
  assert (REPO / argv[argv.index('--config') + 1]).exists()
  signal_name, port = (tmp_path / 'srun_env.txt').read_text().split()
  assert signal_name == 'USR1' and port == str(20000 + 123456 % 20000)
  requeued = (tmp_path / 'scontrol.txt').read_text().strip() if (tmp_path / 'scontrol.txt').exists() else None
  assert requeued == ('requeue 123456' if tasks_exit == 75 else None)
