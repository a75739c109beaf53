"""Turn an official score_sde checkpoint into a run directory that run.py can sample and evaluate from.

  python convert_checkpoint.py --config configs/vp/cifar10_ddpmpp_continuous.py \
      --checkpoint checkpoint_8.pth --workdir runs/ddpmpp_official
  python run.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir runs/ddpmpp_official --mode sample

`.pth` files (score_sde_pytorch, NCSN/NCSNv2) need torch and are read with weights_only=True;
other files are official JAX/Flax msgpack checkpoints. The EMA weights are used when present.
Exit code 2 with one line for a missing file, a checkpoint that does not fit the config, or a workdir
that already holds checkpoints.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The get_config() file of the checkpoint\'s experiment.')
flags.DEFINE_string('checkpoint', None, 'Official checkpoint: .pth (PyTorch) or a Flax msgpack file.')
flags.DEFINE_string('workdir', None, 'New run directory to write.')
flags.DEFINE_integer('step', 0, 'Training step to record in the converted state.')


def convert(config, checkpoint, workdir, step=0):
  import jax
  import jax.numpy as jnp
  from score_sde import losses
  from score_sde.runner import checkpoints
  from score_sde.models import convert as model_convert
  if checkpoint.endswith('.pth'):
    variables = model_convert.from_official_pytorch(config, model_convert.load_pth(checkpoint))
  else:
    variables = model_convert.from_official_flax(config, checkpoint)
  state = losses.init_train_state(jax.random.PRNGKey(config.seed), variables['params'],
                                  losses.get_optimizer(config))
  state = state.replace(step=jnp.asarray(step, jnp.int32))
  run = checkpoints.RunCheckpoints(workdir)
  try:
    run.save(state, permanent=True)
  finally:
    run.close()
  checkpoints.save_config(workdir, config)


def main(argv):
  try:
    FLAGS(argv)
  except (flags.Error, AttributeError, OSError) as error:
    return fail(str(error).splitlines()[0])
  for name in ('config', 'checkpoint', 'workdir'):
    if getattr(FLAGS, name) is None:
      return fail(f'--{name} is required.')
  if not os.path.isfile(FLAGS.checkpoint):
    return fail(f'no checkpoint file at {FLAGS.checkpoint}.')
  from score_sde import config_table
  from score_sde.runner import checkpoints
  if checkpoints.has_checkpoint(FLAGS.workdir):
    return fail(f'{FLAGS.workdir} already holds checkpoints; pick a new --workdir.')
  try:
    convert(config_table.with_defaults(FLAGS.config), FLAGS.checkpoint, FLAGS.workdir, FLAGS.step)
  except (ValueError, ImportError) as error:
    return fail(str(error).replace('\n', ' '))
  print(f'wrote {FLAGS.workdir}: sample with  python run.py --config <same config> --workdir {FLAGS.workdir} '
        '--mode sample')
  return 0


def fail(message):
  print(f'error: {message}', file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main(sys.argv))
