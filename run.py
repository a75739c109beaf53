"""score_sde command line.

  python run.py --config configs/quickstart.py --workdir runs/quickstart --mode train \
      [--config.training.batch_size=64 ...]

Exit codes: 0 success; 2 bad config, argument or missing data (one line on stderr, workdir untouched);
1 a run that failed (e.g. a NaN loss, or a checkpoint or output that cannot be written: one `error:` line naming
what, where and the errno text; the last good checkpoint is kept); 75 pre-empted: on SIGTERM, or on the signal
named by SCORE_SDE_PREEMPT_SIGNAL (e.g. USR1 for sbatch --signal=USR1@120), training saves the step it is on,
eval the round it is on, sample and likelihood write nothing; the same command resumes (runner/preemption.py).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

USAGE_LINE = 'usage: python run.py --config <file.py> --workdir <dir> --mode <mode> [options]'
USAGE = """{usage_line}

modes:
{modes}

options:
  --config <file.py>           a get_config() file, e.g. configs/quickstart.py or configs/vp/cifar10_ddpmpp_continuous.py
  --config.<section>.<field>=<value>
                               override any field, e.g. --config.training.batch_size=64
                               --config.model.ch_mult='(1,2)' --config.sampling.method=dpm_solver++
  --workdir <dir>              checkpoints, metrics.jsonl, TensorBoard events, samples
  --mode <mode>                one of the modes above
  --eval_folder <name>         subfolder of the workdir for --mode eval results (default: eval)
  --check                      check the config, overrides, data, checkpoints and weights, say in one line what
                               the run would do, write nothing, and exit (0, or 2 with the problem)
  --verbose                    show library log lines (orbax, absl) and tracebacks on the terminal too; without
                               it they go to <workdir>/run.log
  --coordinator_address host:port --num_processes N --process_id i
                               several processes (one per host); give the same address and count to each
  -h, --help                   this text

Exit codes: 0 success; 2 bad config, argument or missing data (one line; the workdir is left as it was);
1 a run that failed after it started (one error: line; the last good checkpoint is kept);
75 pre-empted (SIGTERM, or the signal named by SCORE_SDE_PREEMPT_SIGNAL, e.g. USR1): saved, resumable by
running the same command again."""


def mode_table():
  """The table of modes (score_sde.runner.modes.MODES): importing it imports JAX, so only when needed."""
  from score_sde.runner import modes as runner_modes
  return runner_modes.MODES


def usage():
  table = '\n'.join(f'  {name:<11} {info}' for name, info in
                    ((name, mode_table().info(name)['help']) for name in mode_table().names()))
  return USAGE.format(usage_line=USAGE_LINE, modes=table)


def fail(message, code=2, prefix='error: '):
  """One line on stderr, from process 0 only in a run over several processes, and exit at once: background
  threads (orbax's checkpoint I/O) would otherwise print their teardown tracebacks after the line."""
  if not any(arg.startswith('--process_id=') and arg != '--process_id=0' for arg in sys.argv):
    print(f'{prefix}{message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def _config_path(args):
  """The --config file and the remaining arguments (ml_collections reads the --config.* overrides)."""
  for i, arg in enumerate(args):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1], args[:i] + args[i + 1:]
    if arg == '--config':
      if i + 1 == len(args):
        fail(f'--config needs a file. {USAGE_LINE}')
      return args[i + 1], args[:i] + args[i + 2:]
  fail(f'--config is required. {USAGE_LINE}')


def _overridden_fields(args):
  for arg in args:
    if arg.startswith('--config.'):
      yield arg[len('--config.'):].split('=', 1)[0]


def parse(argv):
  """(config, flags) from the command line; every problem is one line and exit code 2."""
  args = argv[1:]
  if any(arg in ('-h', '--help', '-help', '--helpfull', '--helpshort') for arg in args):
    print(usage())
    sys.exit(0)
  from absl import flags
  from ml_collections import config_flags
  from score_sde import config_table
  path, rest = _config_path(args)
  try:
    config = config_table.load(path)
  except config_table.ConfigError as error:
    fail(str(error))
  known = config_table.field_names(config)
  for name in _overridden_fields(rest):
    if name not in known:
      fail(f'unknown config field {name!r} (--config.{name}).' + config_table.suggest(name, known))
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
  flags.DEFINE_string('mode', None, 'What to run: one of the modes of python run.py --help.')
  flags.DEFINE_string('eval_folder', 'eval', 'Subfolder of the workdir for --mode eval results.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for runs over several processes.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
  flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes - 1 (with --coordinator_address).')
  flags.DEFINE_boolean('check', False, 'Check everything knowable before running, say what the run would do, exit.')
  flags.DEFINE_boolean('verbose', False, 'Library log lines and tracebacks on the terminal, not only in run.log.')
  FLAGS = flags.FLAGS
  try:
    sys.argv = [argv[0]] + rest  # ml_collections reads the --config.* overrides from sys.argv
    config_flags.DEFINE_config_dict('config', config, lock_config=True)
    FLAGS(sys.argv)
  except flags.IllegalFlagValueError as error:
    fail(f'bad value: {str(error).splitlines()[0]}')
  except flags.UnrecognizedFlagError as error:
    fail(f'unknown flag --{error.flagname}. Run python run.py --help for the flags.')
  except flags.Error as error:
    fail(f'{str(error).splitlines()[0]}. Run python run.py --help for the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    fail(f'bad config override: {str(error).splitlines()[0]}')
  for name in ('workdir', 'mode'):
    if getattr(FLAGS, name) is None:
      fail(f'--{name} is required. {USAGE_LINE}')
  problem = mode_table().problem(FLAGS.mode)
  if problem:
    fail(f'--mode={FLAGS.mode!r} {problem}.')
  if (FLAGS.coordinator_address is None) != (FLAGS.num_processes is None) or \
      (FLAGS.num_processes is None) != (FLAGS.process_id is None):
    fail('--coordinator_address, --num_processes and --process_id go together; give all three or none.')
  if FLAGS.num_processes is not None and not 0 <= FLAGS.process_id < FLAGS.num_processes:
    fail(f'--process_id={FLAGS.process_id} must lie in [0, --num_processes={FLAGS.num_processes}).')
  return FLAGS.config, FLAGS, path


def main(argv):
  from score_sde.runner import preemption  # light: os and signal; listening starts before the slow imports
  try:
    notices = preemption.Preemption.from_environment().install()
  except ValueError as error:
    fail(str(error))
  config, FLAGS, path = parse(argv)
  if notices.requested:
    fail(f'pre-empted ({notices.received}) before the run started; nothing was written.', preemption.EXIT_CODE, '')
  if FLAGS.check:
    notices.uninstall()
  from score_sde import parallel
  try:
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except (ValueError, RuntimeError) as error:  # e.g. a cluster environment JAX cannot read, an unreachable coordinator
    fail(f'jax.distributed could not start: {str(error).splitlines()[0]}', code=1)
  from score_sde.runner import log_file, modes, validate
  try:
    validate.resolve_num_classes(config)  # model.num_classes=-1: the data's
    validate.validate(config, FLAGS.mode, FLAGS.workdir)
    if FLAGS.check:
      print(modes.check(config, FLAGS.workdir, FLAGS.mode, eval_folder=FLAGS.eval_folder, config_path=path))
      return
    log = log_file.route_library_logs(FLAGS.workdir, FLAGS.verbose)
    with log_file.tracebacks_to(log, FLAGS.verbose):
      modes.run(config, FLAGS.workdir, FLAGS.mode, eval_folder=FLAGS.eval_folder, config_path=path,
                preemption=notices)
  except validate.ConfigError as error:
    fail(str(error))
  except modes.RunFailed as error:
    fail(str(error), code=1)
  except preemption.Preempted as stopped:
    parallel.shutdown()  # every process got here at the same step: leave together, none waits for the others
    fail(str(stopped), preemption.EXIT_CODE, '')


if __name__ == '__main__':
  main(sys.argv)
