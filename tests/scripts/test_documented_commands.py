"""Every command the README and docs/ print for run.py, experiments/ and benchmarks/ runs, in a cheap form.

- run.py: with --check (config, overrides, data, checkpoints, weights; nothing written). Commands on a trained
  run (runs/quickstart, runs/gmm, ...) check against a run of the same config made here: its initial state saved
  as the final step's checkpoint, so the checkpoint fits exactly what the command builds.
- experiments/sweep.py: --print_commands (its dry run); likelihood_eval.py: --check; other scripts: --help.

runs/ in a command becomes a folder of the test's own. A documented command that cannot run this way fails the
test, unless SKIP names it with the reason.
"""
import concurrent.futures
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from helpers import ENV, REPO

PROGRAM = re.compile(r'^python (run\.py|experiments/[\w/]+\.py|benchmarks/\w+\.py)(\s|$)')

# (pattern, reason): documented commands this test does not run.
SKIP = [
    (r'<[^>]*>', 'a template: the user fills in the <...> part (a data folder, a clone, a process index)'),
    (r'--coordinator_address=host0', 'several hosts of a cluster'),
    (r'gs://', 'runs on a TPU VM through gcloud, with a bucket'),
]


def documented_commands():
  """(doc file, command) for each command line printed in a fenced shell block or in inline code."""
  found = []
  for path in [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]:
    text = path.read_text()
    spans = []
    for lang, block in re.findall(r'```(\w*)\n(.*?)```', text, re.S):
      if lang in ('', 'bash', 'sh', 'shell'):
        spans += block.replace('\\\n', ' ').splitlines()
    spans += re.findall(r'`([^`]+)`', re.sub(r'```.*?```', '', text, flags=re.S))
    for span in spans:
      for part in re.split(r'&&', ' '.join(span.split())):
        part = part.strip()
        if PROGRAM.match(part):
          found.append((path.name, part))
  first_doc = {}
  for doc, command in found:
    first_doc.setdefault(command, doc)
  return sorted((doc, command) for command, doc in first_doc.items())


COMMANDS = documented_commands()


def skip_reason(command):
  return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def test_the_docs_print_commands_of_every_kind():
  programs = {PROGRAM.match(c).group(1).split('/')[0] for _, c in COMMANDS}
  assert {'run.py', 'experiments', 'benchmarks'} <= programs, programs
  assert all(skip_reason(c) is None for _, c in COMMANDS if 'configs/quickstart.py' in c and '<' not in c)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """workdir name under runs/ -> a folder holding a run of that config (made once, on first use)."""
  root = tmp_path_factory.mktemp('runs')
  made = {}

  def run_of(name, config_path):
    if name not in made:
      from score_sde import config_table
      from score_sde.runner import checkpoints, run_state
      config = config_table.load(str(REPO / config_path))
      state = run_state.create_train_state(config, jax.random.PRNGKey(0))
      state = state.replace(step=jnp.asarray(config.training.n_iters, jnp.int32))
      saver = checkpoints.RunCheckpoints(str(root / name))
      try:
        saver.save(state, permanent=True)
      finally:
        saver.close()
      checkpoints.save_config(str(root / name), config)
      made[name] = root / name
    return made[name]

  run_of.root = root
  return run_of


# The trained runs the docs name (runs/<name>), and the config each was trained with.
TRAINED = {'quickstart': 'configs/quickstart.py', 'gmm': 'configs/toy/gmm.py'}


def _with_runs(argv, runs, config=None):
  """argv with each runs/<name> replaced by a run of the test's own (made from `config`, or TRAINED[name])."""
  out = []
  for arg in argv:
    for name in re.findall(r'runs/(\w+)', arg):
      arg = arg.replace(f'runs/{name}', str(runs(name, config or TRAINED[name])))
    out.append(arg)
  return out


def cheap_form(command, runs):
  """The argv that runs `command` cheaply, with runs/<name> mapped to the test's runs."""
  argv = [sys.executable] + shlex.split(command)[1:]
  script = argv[1]
  if script == 'run.py' and '--config' not in argv:
    return argv
  if script == 'run.py':
    config = argv[argv.index('--config') + 1]
    config = None if ':' in config else config  # experiments/workdir_config.py:runs/<name> reads a trained run
    workdir = argv.index('--workdir') + 1
    if argv[argv.index('--mode') + 1] == 'train':  # a new run: a folder that does not exist yet
      argv[workdir] = str(runs.root / ('new_' + argv[workdir].replace('/', '_')))
    return _with_runs(argv, runs, config) + ['--check']
  if script == 'experiments/likelihood_eval.py':
    return _with_runs(argv, runs) + ['--check']
  if script == 'experiments/sweep.py':
    return argv + ['--print_commands', '--out', str(runs.root / 'sweeps')]
  return [sys.executable, script, '--help']


@pytest.fixture(scope='module')
def outcomes(runs, request):
  """command -> (argv, finished process), every selected runnable command run once, three at a time (each is
  mostly a Python start-up importing JAX and TensorFlow)."""
  selected = {item.callspec.params['command'] for item in request.session.items
              if item.originalname == 'test_documented_command_runs'}
  argvs = {command: cheap_form(command, runs) for _, command in COMMANDS
           if command in selected and skip_reason(command) is None}

  def run(argv):
    return subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    done = dict(zip(argvs, pool.map(run, argvs.values())))
  return {command: (argvs[command], done[command]) for command in argvs}


@pytest.mark.parametrize('doc,command', COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_runs(doc, command, outcomes):
  reason = skip_reason(command)
  if reason:
    pytest.skip(reason)
  argv, done = outcomes[command]
  assert done.returncode == 0, f'{doc}: {command}\n  ran as {shlex.join(argv)}\n  {done.stderr.strip()[-1500:]}'
  if '--check' in argv:
    assert 'would' in done.stdout and 'error' not in done.stdout, done.stdout
