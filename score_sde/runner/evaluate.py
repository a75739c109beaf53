"""--mode eval: FID, KID and Inception Score of samples, and bpd and loss of held-out data, over checkpoints.

Work is done in rounds (one sampling batch, or one bpd batch of one estimator and one dequantization repeat:
bpd_<repeat>_<batch>.npz for the probability-flow ODE, bound_<repeat>_<batch>.npz for the bound), and each
finished round is kept in <workdir>/<eval_folder>/ckpt_<step>/, so a killed evaluation resumes without
redoing any; on a pre-emption notice it stops once the round it is on is written (Preempted).
Results go to <workdir>/<eval_folder>/eval_results.json:
  {'checkpoints': {'<step>': {'fid': {'mean', 'stderr'}, 'kid', 'inception_score', 'bpd', 'loss': ..., 'nfe', ...}}}
'bpd' is the ODE's bits/dim and 'bound' the score_flow bound (eval.bpd_method), each with '<name>_nfe' and
'<name>_seconds_per_image'.
"""
import functools
import hashlib
import itertools
import json
import os

from absl import logging
import jax
import numpy as np

from score_sde import atomic_files, config_table, controllable, datasets, losses, models, parallel, sampling, sde_lib
from score_sde.metrics import features, formulas
from score_sde.runner import bpd_estimators, checkpoints, conditional_sampling, outputs, run_state
from score_sde.runner.preemption import Preempted

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
  """The rounds of one evaluation: those finished before it started are read back, the others run and saved;
  after a round is saved, a pre-emption notice (runner.preemption.Preemption) stops the evaluation."""

  def __init__(self, folder, preemption=None):
    self.finished = _finished_rounds(folder)
    self.preemption = preemption

  def load_or_run(self, path, compute):
    """(the round's arrays, whether they were computed now)."""
    if path in self.finished:
      with np.load(path) as done:
        return {k: done[k] for k in done.files}, False
    arrays = compute()
    if parallel.is_main_process():
      atomic_files.savez(path, **arrays)
    if self.preemption is not None and self.preemption.at_sync():
      raise Preempted(f'pre-empted ({self.preemption.received}) after writing {path}; the same command resumes '
                      'from the next round.')
    return arrays, True


# eval fields that change what a bpd round holds (eval.bpd_method only chooses which rounds run, so it is not here).
LIKELIHOOD_SETTINGS = ('bound_num_t', 'bound_importance_sampling', 'dequantization_samples')


def _check_settings(config, round_dir):
  """Finished rounds are reused only under the settings that made them; anything else is refused."""
  settings = {'sampling': config.sampling.to_dict(), 'num_scales': config.model.num_scales, 'seed': config.seed,
              'sde': config.training.sde, 'batch_size': config.eval.batch_size,
              'likelihood_tolerances': [config.eval.likelihood_rtol, config.eval.likelihood_atol],
              'feature_extractor': config.eval.feature_extractor,
              'inception_weights': config.eval.inception_weights, 'bpd_dataset': config.eval.bpd_dataset,
              'inception_resize': config.eval.inception_resize,
              **{field: config.eval[field] for field in LIKELIHOOD_SETTINGS}}
  if config.model.num_classes:  # a class-conditional model's bpd is of x given its label, or of x alone
    settings['bpd_condition'] = config.eval.bpd_condition
  settings = json.loads(json.dumps(settings))  # tuples → lists, as they read back
  path = os.path.join(round_dir, 'settings.json')
  if os.path.exists(path):
    with open(path) as f:  # folders from before a field existed were made with its default
      saved = {**{f: config_table.FIELDS[f'eval.{f}'].default for f in LIKELIHOOD_SETTINGS}, **json.load(f)}
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


def evaluate(config, workdir, eval_folder='eval', preemption=None):
  ec = config.eval
  folder = os.path.join(workdir, eval_folder)
  results_path = os.path.join(folder, RESULTS_FILE)
  steps = checkpoint_steps(config, workdir)
  dataset = datasets.get_dataset(config)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  name = features.feature_extractor_name(config, dataset.is_image) if ec.enable_sampling else None
  feature_fn = _feature_fn(config, name) if ec.enable_sampling else None
  rounds = Rounds(folder, preemption)
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


SAMPLE_ROUND = 'samples_{round}.npz'  # one sampling batch: its samples, their features (and logits), its nfe


def _sample_rounds(config, dataset, state, sde, model, sampler, feature_fn, name, rounds, round_dir, step):
  ec = config.eval
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  num_rounds = -(-ec.num_samples // ec.batch_size)
  feats, logits, nfes, fresh = [], [], [], 0
  # A class-conditional model: class-balanced samples with classifier-free guidance (the cfg fields).
  guidance = (conditional_sampling.BalancedGuidance(config, sde, score_fn, ec.batch_size)
              if config.model.num_classes else None)
  judged = []

  def draw(r):
    samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step), r),
                           score_fn if guidance is None else guidance.score(r))
    samples = parallel.to_host(samples)
    samples = features.quantize(samples) if dataset.is_image else samples.astype(np.float32)
    f, lg = feature_fn(samples / 255. if dataset.is_image else samples)
    out = {'samples': samples, 'features': f, 'nfe': np.asarray(int(nfe))}
    out = out if guidance is None else {**out, 'labels': guidance.round_labels(r)}
    return out if lg is None else {**out, 'logits': lg}

  progress = outputs.Progress(f'eval {step}: sampling', num_rounds, 'round')
  for r in range(num_rounds):
    done, new = rounds.load_or_run(os.path.join(round_dir, SAMPLE_ROUND.format(round=r)), functools.partial(draw, r))
    fresh += new
    progress.update()
    feats.append(done['features'])
    logits.append(done.get('logits'))
    nfes.append(int(done['nfe']))
    if guidance is not None:
      judged.append((done['samples'] / 255. if dataset.is_image else done['samples'], done['labels']))
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
  if guidance is not None:
    samples, labels = (np.concatenate(parts)[:ec.num_samples] for parts in zip(*judged))
    metrics.update(guidance.settings(), **guidance.class_accuracy(samples, labels))
  return {**metrics, 'nfe': float(np.mean(nfes)), 'num_samples': len(feats), 'num_reference': num_reference,
          'feature_extractor': name, 'sampling_rounds_run_now': fresh}


def _loss_rounds(config, dataset, state, sde, model, rounds, round_dir):
  """The training objective on the held-out split (the official eval.enable_loss), mean ± stderr over batches."""
  step = jax.jit(losses.get_step_fn(sde, model, train=False, **losses.loss_options(config)))
  scaler = datasets.get_data_scaler(config)

  def compute(i, data):
    noise_state = state.replace(rng=jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), i))
    batch = jax.tree.map(parallel.full_batch, losses.loss_batch(model, data, scaler))
    return {'loss': parallel.to_host(step(noise_state, batch)[1]['loss'])}

  values = [rounds.load_or_run(os.path.join(round_dir, f'loss_{i}.npz'), functools.partial(compute, i, batch))[0]
            ['loss'] for i, batch in enumerate(dataset.eval_batches())]
  return {'loss': formulas.mean_stderr(values)}


def bpd_score(config, score_fn, batch):
  """The score a batch's bpd is measured under: a class-conditional model's at each example's true label
  (eval.bpd_condition='label': -log p(x | y)) or at the null label ('none': -log p(x)); else score_fn itself."""
  if not config.model.num_classes:
    return score_fn
  return controllable.conditional_score(score_fn, batch['label'] if config.eval.bpd_condition == 'label' else None)


def get_bpd_fn(config, sde, dataset):
  """{name: estimate(score_fn, images, dequantization_seed, key) -> round} for eval.bpd_method: 'bpd' the
  probability-flow ODE, 'bound' the score_flow bound, for batches in [0, 1] (runner/bpd_estimators.py)."""
  return bpd_estimators.get_estimators(config, sde, dataset)


BPD_ROUND = '{name}_{repeat}_{batch}.npz'  # one estimator, one dequantization repeat, one batch


def bpd_batches(config, dataset):
  """The images the bpd is computed on: full eval.batch_size batches of the held-out split (of the training split
  with eval.bpd_dataset='train', the official bpd_dataset)."""
  batches = dataset.reference_batches if config.eval.bpd_dataset == 'train' else dataset.eval_batches
  return (b for b in batches() if len(b['image']) == config.eval.batch_size)


def _bpd_rounds(config, dataset, state, sde, model, bpd_fn, rounds, round_dir):
  """Each estimator of bpd_fn on the bpd batches, eval.bpd_num_repeats times with fresh dequantization noise."""
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  entry = {}

  def compute(estimate, repeat, i, batch):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), repeat), i)
    return estimate(bpd_score(config, score_fn, batch), batch['image'], [config.seed, repeat, i], key)

  for name, estimate in bpd_fn.items():
    repeats, fresh = [], 0
    for repeat in range(config.eval.bpd_num_repeats):
      done = []
      for i, batch in enumerate(bpd_batches(config, dataset)):
        path = os.path.join(round_dir, BPD_ROUND.format(name=name, repeat=repeat, batch=i))
        arrays, new = rounds.load_or_run(path, functools.partial(compute, estimate, repeat, i, batch))
        fresh += new
        done.append(arrays)
      repeats.append(done)
    summary, per_example = bpd_estimators.summarize(name, repeats)
    entry.update(summary, **{f'{name}_rounds_run_now': fresh})
  if config.model.num_classes:  # a class-conditional model: of x given its label, or of x alone
    entry['bpd_condition'] = config.eval.bpd_condition
  return {**entry, 'bpd_num_examples': len(per_example), 'bpd_num_repeats': config.eval.bpd_num_repeats,
          'bpd_dataset': config.eval.bpd_dataset, 'dequantization': bpd_estimators.dequantization(config,
                                                                                                 dataset.is_image)}


def per_example_values(workdir, step, name='bpd', eval_folder='eval'):
  """The per-image values of estimator `name` ('bpd', 'bound') that --mode eval kept for checkpoint `step`, the
  repeats found averaged, in the order of bpd_batches: runs evaluated with the same seed and settings are paired
  image by image and dequantization draw by draw. None when there are none."""
  round_dir = os.path.join(workdir, eval_folder, f'ckpt_{step}')
  repeats = []
  for repeat in itertools.count():
    values = []
    for i in itertools.count():
      path = os.path.join(round_dir, BPD_ROUND.format(name=name, repeat=repeat, batch=i))
      if not os.path.exists(path):
        break
      with np.load(path) as done:
        values.append(done[name])
    if not values:
      break
    repeats.append(np.concatenate(values))
  return np.mean(repeats, axis=0) if repeats else None


def sample_features(workdir, step, eval_folder='eval'):
  """(n, d) float64 features of the samples --mode eval kept for checkpoint `step`, in round order; None when
  there are none. Runs of the same shape evaluated with the same seed and sampling settings drew round r from
  the same key, so their samples start from the same latents and are paired sample by sample."""
  round_dir = os.path.join(workdir, eval_folder, f'ckpt_{step}')
  feats = []
  for r in itertools.count():
    path = os.path.join(round_dir, SAMPLE_ROUND.format(round=r))
    if not os.path.exists(path):
      break
    with np.load(path) as done:
      feats.append(done['features'])
  return np.concatenate(feats).astype(np.float64) if feats else None

