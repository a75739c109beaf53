"""What each --mode of run.py does, on top of train.py and checkpoints.py."""
import json
import os

from absl import logging
import jax
import numpy as np

from score_sde import checkpoints, datasets, evaluate, models, sde_lib, train, validate


class RunFailed(RuntimeError):
  """A run that started but could not finish."""


def has_checkpoint(workdir):
  return any(os.path.isdir(os.path.join(workdir, d)) and os.listdir(os.path.join(workdir, d))
             for d in (checkpoints.PREEMPTION_DIR, checkpoints.PERMANENT_DIR))


def _restore(config, workdir):
  state = checkpoints.restore(workdir, train.abstract_train_state(config))
  if state is None:
    raise RunFailed(f'no checkpoint in {workdir} restores; train again.')
  return state


def sample(config, workdir):
  """eval.num_samples samples from the EMA parameters, in rounds of eval.batch_size."""
  state = _restore(config, workdir)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  batch = min(config.eval.batch_size, config.eval.num_samples)
  sampler, score_of = train.get_sampler_and_score(config, sde, model, batch)
  score_fn = score_of(state.params_ema)
  rounds, total_nfe = [], 0
  for r in range(-(-config.eval.num_samples // batch)):
    samples, nfe = sampler(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), r), score_fn)
    rounds.append(np.asarray(samples))
    total_nfe += int(nfe)
  samples = np.concatenate(rounds)[:config.eval.num_samples]
  path = train.save_samples(config, os.path.join(workdir, 'samples'), f'samples_step_{int(state.step)}', samples)
  logging.info('Wrote %d samples (%d score evaluations per round) to %s', len(samples), total_nfe // len(rounds),
               path)
  return samples


def bits_per_dim(config, workdir):
  """bpd of the held-out split under the EMA parameters, mean ± standard error, to likelihood.json."""
  state = _restore(config, workdir)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  dataset = datasets.get_dataset(config)
  bpd_fn = evaluate.get_bpd_fn(config, sde, dataset)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  key = jax.random.PRNGKey(config.seed + 2)
  values = np.concatenate([bpd_fn(score_fn, batch['image'], [config.seed, i], jax.random.fold_in(key, i))
                           for i, batch in enumerate(dataset.eval_batches())])
  bpd = evaluate.mean_stderr(values)
  result = {'step': int(state.step), 'bpd_mean': bpd['mean'], 'bpd_stderr': bpd['stderr'],
            'num_examples': int(len(values)), 'dataset': config.data.dataset}
  with open(os.path.join(workdir, 'likelihood.json'), 'w') as f:
    json.dump(result, f, indent=2)
  logging.info('bpd %.4f ± %.4f over %d examples', result['bpd_mean'], result['bpd_stderr'], len(values))
  return result


def run(config, workdir, mode, eval_folder='eval'):
  if mode == 'train':
    try:
      train.train(config, workdir)
    except train.TrainingDiverged as error:
      raise RunFailed(str(error)) from None
    except train.CheckpointMismatch as error:
      raise validate.ConfigError(str(error)) from None
  elif mode == 'sample':
    sample(config, workdir)
  elif mode == 'likelihood':
    bits_per_dim(config, workdir)
  elif mode == 'eval':
    try:
      evaluate.evaluate(config, workdir, eval_folder)
    except evaluate.EvalError as error:
      raise validate.ConfigError(str(error)) from None
