"""score_sde command line.

  python run.py --config configs/quickstart.py --workdir runs/quickstart --mode train \
      [--config.training.batch_size=64 ...]

Exit codes: 0 success; 2 bad config, argument or missing data (one line, workdir untouched);
1 a run that failed (e.g. a NaN loss; the last good checkpoint is kept).
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.DEFINE_enum('mode', None, ['train', 'eval', 'sample', 'likelihood'], 'What to run.')
flags.DEFINE_string('eval_folder', 'eval', 'Subfolder of the workdir for --mode eval results (one per sampler '
                    'setting lets several evaluations share one trained run).')

USAGE = 'usage: python run.py --config <file.py> --workdir <dir> --mode train|eval|sample|likelihood'


def fail(message, code=2):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def parse(argv):
  try:
    FLAGS(argv)
  except flags.IllegalFlagValueError as error:
    fail(f'bad value: {str(error).splitlines()[0]}')
  except flags.UnrecognizedFlagError as error:
    fail(f'unknown flag --{error.flagname}. {USAGE}')
  except flags.Error as error:
    fail(f'{str(error).splitlines()[0]}. {USAGE}')
  except AttributeError as error:
    fail(f'bad config override: {error}. Check the field name against the config file.')
  except (OSError, ImportError, SyntaxError) as error:
    fail(f'cannot load the config file: {error}')
  for name in ('config', 'workdir', 'mode'):
    if getattr(FLAGS, name) is None:
      fail(f'--{name} is required. {USAGE}')
  return FLAGS.config, FLAGS.workdir, FLAGS.mode


MULTI_HOST_ENV = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                  'TPU_WORKER_HOSTNAMES')


def maybe_initialize_distributed():
  """Multi-host runs: jax.distributed.initialize() when a cluster environment says there are several processes."""
  if any(os.environ.get(name) not in (None, '', '1') for name in MULTI_HOST_ENV):
    import jax
    jax.distributed.initialize()


def main(argv):
  config, workdir, mode = parse(argv)
  maybe_initialize_distributed()
  from score_sde import datasets, validate
  from score_sde import run_lib
  try:
    validate.validate(config, mode)
    if mode != 'train' and not run_lib.has_checkpoint(workdir):
      fail(f'no checkpoint in {workdir}; train first (--mode train) or point --workdir at a trained run.')
    logging.set_verbosity(logging.INFO)
    import logging as python_logging
    python_logging.getLogger('absl').addFilter(lambda record: 'orbax' not in record.pathname)
    run_lib.run(config, workdir, mode, FLAGS.eval_folder)
  except (validate.ConfigError, datasets.DatasetError) as error:
    fail(str(error))
  except run_lib.RunFailed as error:
    fail(str(error), code=1)


if __name__ == '__main__':
  main(sys.argv)
