"""--mode eval: FID, KID and Inception Score of samples, and bpd and loss of held-out data, over checkpoints.

Work is done in rounds (one sampling batch, or one bpd batch of one dequantization repeat), and each
finished round is kept in <workdir>/<eval_folder>/ckpt_<step>/, so a killed evaluation resumes without
redoing any. Results go to <workdir>/<eval_folder>/eval_results.json:
  {'checkpoints': {'<step>': {'fid': {'mean', 'stderr'}, 'kid', 'inception_score', 'bpd', 'loss': ..., 'nfe', ...}}}
"""
import functools
import hashlib
import json
import os

from absl import logging
import jax
import numpy as np

from score_sde import atomic_files, datasets, likelihood, losses, models, parallel, sampling, sde_lib
from score_sde.metrics import features, formulas
from score_sde.runner import checkpoints, outputs, run_state

RESULTS_FILE = 'eval_results.json'


class EvalError(ValueError):
  """An evaluation that cannot start: no checkpoint in range, or no feature network."""


def _feature_fn(config, name):
  try:
    return features.get_feature_fn(config, name)
  except (OSError, ValueError) as error:  # a missing, corrupt or wrong weights file
    raise EvalError(f'cannot load the {name} weights: {str(error).splitlines()[0]}') from None


def reference_features(config, dataset, name, feature_fn):
  """Features of the training data (the test points for toy data), computed once and cached under eval.stats_dir,
  in a file named by a hash of everything that decides them."""
  num = config.eval.num_reference
  data = config.data
  identity = {'dataset': data.dataset, 'category': data.category, 'image_size': data.image_size,
              'num_channels': data.num_channels, 'num_test': data.num_test,
              'data_dir': os.path.abspath(data.data_dir) if data.data_dir else '',
              'image_folder': os.path.abspath(data.image_folder) if data.image_folder else '',
              'tfrecords_path': os.path.abspath(data.tfrecords_path) if data.tfrecords_path else '',
              'seed': config.seed if not dataset.is_image else None, 'features': name, 'num_reference': num,
              'inception_weights': (os.path.abspath(config.eval.inception_weights)
                                    if name == 'inception' and config.eval.inception_weights else ''),
              'inception_resize': config.eval.inception_resize if name == 'inception' else ''}
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
  stats_dir = config.eval.stats_dir or os.path.join(os.path.expanduser('~'), '.cache', 'score_sde',
                                                                'stats')
  path = os.path.join(stats_dir, f"{data.dataset.replace('/', '-')}_{name}_{digest}.npz")
  if os.path.exists(path):
    with np.load(path) as cached:
      return cached['features']
  feats, count = [], 0
  for batch in dataset.reference_batches():
    images = batch['image'][:num - count]
    feats.append(feature_fn(features.quantize(images) / 255. if dataset.is_image else images)[0])
    count += len(images)
    if count >= num:
      break
  feats = np.concatenate(feats).astype(np.float32)
  if parallel.is_main_process():
    atomic_files.savez(path, features=feats, identity=json.dumps(identity, sort_keys=True))
  logging.info('Reference features of %d examples cached in %s', len(feats), path)
  return feats


# --- rounds on disk -----------------------------------------------------------------------------------------------

def _finished_rounds(folder):
  """The round files present when this evaluation started. Every process decides from this same list, taken
  before process 0 writes anything new, so they all run the same rounds together."""
  found = set()
  for root, _, files in os.walk(folder):
    found.update(os.path.join(root, f) for f in files if f.endswith('.npz'))
  return found


class Rounds:
  """The rounds of one evaluation: those finished before it started are read back, the others run and saved."""

  def __init__(self, folder):
    self.finished = _finished_rounds(folder)

  def load_or_run(self, path, compute):
    """(the round's arrays, whether they were computed now)."""
    if path in self.finished:
      with np.load(path) as done:
        return {k: done[k] for k in done.files}, False
    arrays = compute()
    if parallel.is_main_process():
      atomic_files.savez(path, **arrays)
    return arrays, True


def _check_settings(config, round_dir):
  """Finished rounds are reused only under the settings that made them; anything else is refused."""
  settings = {'sampling': config.sampling.to_dict(), 'num_scales': config.model.num_scales, 'seed': config.seed,
              'sde': config.training.sde, 'batch_size': config.eval.batch_size,
              'likelihood_tolerances': [config.eval.likelihood_rtol, config.eval.likelihood_atol],
              'feature_extractor': config.eval.feature_extractor,
              'inception_weights': config.eval.inception_weights, 'bpd_dataset': config.eval.bpd_dataset,
              'inception_resize': config.eval.inception_resize}
  settings = json.loads(json.dumps(settings))  # tuples → lists, as they read back
  path = os.path.join(round_dir, 'settings.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != settings:
      changed = sorted(k for k in settings if saved.get(k) != settings[k])
      raise EvalError(f'{round_dir} holds rounds made with other settings ({", ".join(changed)}); use another '
                      '--eval_folder, or delete that folder to start over.')
  else:
    if parallel.is_main_process():
      os.makedirs(round_dir, exist_ok=True)
      atomic_files.write_json(path, settings)


def checkpoint_steps(config, workdir):
  """Permanent checkpoints whose index ⌈step / snapshot_freq⌉ lies in [eval.begin_ckpt, eval.end_ckpt]."""
  folder = os.path.join(workdir, checkpoints.PERMANENT_DIR)
  steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
  freq = config.training.snapshot_freq
  chosen = [s for s in steps if config.eval.begin_ckpt <= -(-s // freq) <= config.eval.end_ckpt]
  if not chosen:
    raise EvalError(f'no permanent checkpoint in {workdir} with index (step / training.snapshot_freq={freq}) in '
                    f'[eval.begin_ckpt={config.eval.begin_ckpt}, eval.end_ckpt={config.eval.end_ckpt}]; saved steps: '
                    f'{steps}. Set --config.eval.begin_ckpt/--config.eval.end_ckpt.')
  return chosen


def evaluate(config, workdir, eval_folder='eval'):
  ec = config.eval
  folder = os.path.join(workdir, eval_folder)
  results_path = os.path.join(folder, RESULTS_FILE)
  steps = checkpoint_steps(config, workdir)
  dataset = datasets.get_dataset(config)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  name = features.feature_extractor_name(config, dataset.is_image) if ec.enable_sampling else None
  feature_fn = _feature_fn(config, name) if ec.enable_sampling else None
  rounds = Rounds(folder)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('eval: finished rounds listed')
  results = {'checkpoints': {}}
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)

  sampler = bpd_fn = None
  for step in steps:
    try:
      state = checkpoints.restore_step(workdir, step, run_state.abstract_train_state(config))
    except Exception as error:  # orbax raises many kinds when the saved tree does not fit
      raise EvalError(f'checkpoint {step} in {workdir} does not restore into the state this config builds (a '
                      f'changed model?): {str(error).splitlines()[0][:200]}') from None
    _check_settings(config, os.path.join(folder, f'ckpt_{step}'))
    round_dir = os.path.join(folder, f'ckpt_{step}')
    entry = {'step': step}
    if ec.enable_sampling:
      if sampler is None:
        sampler = sampling.get_sampling_fn(config, sde, (ec.batch_size,) + dataset.shape,
                                           datasets.get_data_inverse_scaler(config), sharding=parallel.batch_sharding())
      entry.update(_sample_rounds(config, dataset, state, sde, model, sampler, feature_fn, name, rounds, round_dir, step))
    if ec.enable_loss:
      entry.update(_loss_rounds(config, dataset, state, sde, model, rounds, round_dir))
    if ec.enable_bpd:
      if bpd_fn is None:
        bpd_fn = get_bpd_fn(config, sde, dataset)
      entry.update(_bpd_rounds(config, dataset, state, sde, model, bpd_fn, rounds, round_dir))
    results['checkpoints'][str(step)] = entry
    if parallel.is_main_process():
      atomic_files.write_json(results_path, results)
    logging.info('Checkpoint %d: %s', step, json.dumps({k: v for k, v in entry.items() if k != 'step'}))
  return results


def _sample_rounds(config, dataset, state, sde, model, sampler, feature_fn, name, rounds, round_dir, step):
  ec = config.eval
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  num_rounds = -(-ec.num_samples // ec.batch_size)
  feats, logits, nfes, fresh = [], [], [], 0

  def draw(r):
    samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step), r),
                           score_fn)
    samples = parallel.to_host(samples)
    samples = features.quantize(samples) if dataset.is_image else samples.astype(np.float32)
    f, lg = feature_fn(samples / 255. if dataset.is_image else samples)
    out = {'samples': samples, 'features': f, 'nfe': np.asarray(int(nfe))}
    return out if lg is None else {**out, 'logits': lg}

  progress = outputs.Progress(f'eval {step}: sampling', num_rounds, 'round')
  for r in range(num_rounds):
    done, new = rounds.load_or_run(os.path.join(round_dir, f'samples_{r}.npz'), functools.partial(draw, r))
    fresh += new
    progress.update()
    feats.append(done['features'])
    logits.append(done.get('logits'))
    nfes.append(int(done['nfe']))
  logging.info('Checkpoint %d: %d sampling rounds, %d of them run now.', step, num_rounds, fresh)
  feats = np.concatenate(feats)[:ec.num_samples].astype(np.float64)
  logits = None if logits[0] is None else np.concatenate(logits)[:ec.num_samples]
  if ec.reference_stats:  # the official layout: pool_3 (FID and KID), or mu/sigma (FID only)
    stats = formulas.load_reference_stats(ec.reference_stats, dim=feats.shape[1])
    reference = stats if stats['pool_3'] is None else stats['pool_3']
    num_reference = 'unknown' if stats['pool_3'] is None else len(stats['pool_3'])
  else:
    reference = reference_features(config, dataset, name, feature_fn).astype(np.float64)
    num_reference = len(reference)
  metrics = formulas.sample_metrics(feats, logits, reference, num_splits=ec.num_splits,
                           num_bootstrap=ec.num_bootstrap, seed=config.seed)
  if name == 'inception' and logits is None:
    metrics['inception_score'] = {'unavailable': features.IS_UNAVAILABLE}
  return {**metrics, 'nfe': float(np.mean(nfes)), 'num_samples': len(feats), 'num_reference': num_reference,
          'feature_extractor': name, 'sampling_rounds_run_now': fresh}


def _loss_rounds(config, dataset, state, sde, model, rounds, round_dir):
  """The training objective on the held-out split (the official eval.enable_loss), mean ± stderr over batches."""
  step = jax.jit(losses.get_step_fn(sde, model, train=False, **losses.loss_options(config)))
  scaler = datasets.get_data_scaler(config)

  def compute(i, images):
    noise_state = state.replace(rng=jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), i))
    batch = {'image': parallel.full_batch(scaler(images))}
    return {'loss': parallel.to_host(step(noise_state, batch)[1]['loss'])}

  values = [rounds.load_or_run(os.path.join(round_dir, f'loss_{i}.npz'), functools.partial(compute, i, batch['image']))[0]
            ['loss'] for i, batch in enumerate(dataset.eval_batches())]
  return {'loss': formulas.mean_stderr(values)}


def get_bpd_fn(config, sde, dataset):
  """bpd_fn(score_fn, images, dequantization_seed, key) -> per-example bpd of a batch in [0, 1]: images are
  dequantized with default_rng(dequantization_seed) (always, as officially), then the probability-flow likelihood."""
  inverse_scaler = datasets.get_data_inverse_scaler(config) if dataset.is_image else None
  likelihood_fn = likelihood.get_likelihood_fn(
      sde, inverse_scaler, num_levels=dataset.num_levels, sharding=parallel.batch_sharding(),
      rtol=config.eval.likelihood_rtol, atol=config.eval.likelihood_atol)
  scaler = datasets.get_data_scaler(config)

  def bpd_fn(score_fn, images, dequantization_seed, key):
    if dataset.is_image:
      images = datasets.uniform_dequantize(images, np.random.default_rng(dequantization_seed), dataset.num_levels)
    return parallel.to_host(likelihood_fn(key, score_fn, scaler(images))[0])
  return bpd_fn


def _bpd_rounds(config, dataset, state, sde, model, bpd_fn, rounds, round_dir):
  """bpd of the held-out split (or the training split, with eval.bpd_dataset='train'), eval.bpd_num_repeats
  times with fresh dequantization noise."""
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  repeats, fresh = [], 0

  def compute(repeat, i, images):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), repeat), i)
    return {'bpd': bpd_fn(score_fn, images, [config.seed, repeat, i], key)}

  split = config.eval.bpd_dataset
  batches = dataset.reference_batches if split == 'train' else dataset.eval_batches  # the official bpd_dataset
  for repeat in range(config.eval.bpd_num_repeats):
    values = []
    for i, batch in enumerate(b for b in batches() if len(b['image']) == config.eval.batch_size):
      done, new = rounds.load_or_run(os.path.join(round_dir, f'bpd_{repeat}_{i}.npz'),
                               functools.partial(compute, repeat, i, batch['image']))
      fresh += new
      values.append(done['bpd'])
    repeats.append(np.concatenate(values))
  per_example = np.mean(repeats, axis=0)  # the repeats of one image are not independent: average them first
  return {'bpd': formulas.mean_stderr(per_example), 'bpd_num_examples': len(per_example), 'bpd_num_repeats': len(repeats),
          'bpd_dataset': split, 'bpd_rounds_run_now': fresh}

