"""What each --mode of run.py does: one table from the mode's name to its function."""
import json
import os

import jax
import numpy as np

from score_sde import (checkpoints, datasets, evaluate, models, outputs, parallel, sampling, sde_lib,
                       state as state_lib, train, validate, workdir_lock)


class RunFailed(RuntimeError):
  """A run that started but could not finish."""


def _restore(config, workdir):
  state = checkpoints.restore(workdir, state_lib.abstract_train_state(config))
  if state is None:
    raise RunFailed(f'no checkpoint in {workdir} restores; train again.')
  return state


def run_train(config, workdir, config_path='', **_):
  dataset = datasets.get_dataset(config)  # a missing dataset is reported before the workdir is touched
  lock = workdir_lock.WorkdirLock(workdir, 'training') if parallel.is_main_process() else None
  try:
    if lock:
      lock.acquire()
    return train.train(config, workdir, dataset, config_path)
  except train.TrainingDiverged as error:
    raise RunFailed(str(error)) from None
  finally:
    if lock:
      lock.release()


def run_sample(config, workdir, **_):
  """eval.num_samples samples from the EMA parameters, in rounds of eval.batch_size, to <workdir>/samples."""
  state = _restore(config, workdir)
  if config.sampling.condition != 'none':
    from score_sde import conditioning
    return conditioning.run(config, workdir, state)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  batch = min(config.eval.batch_size, config.eval.num_samples)
  sampler = sampling.get_sampling_fn(config, sde, (batch,) + datasets.spec(config).shape,
                                     datasets.get_data_inverse_scaler(config), sharding=parallel.batch_sharding())
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  num_rounds = -(-config.eval.num_samples // batch)
  progress = outputs.Progress('sample', num_rounds, 'round')
  rounds, total_nfe = [], 0
  for r in range(num_rounds):
    samples, nfe = sampler(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), r), score_fn)
    rounds.append(parallel.to_host(samples))
    total_nfe += int(nfe)
    progress.update()
  progress.close()
  samples = np.concatenate(rounds)[:config.eval.num_samples]
  path = outputs.save_samples(os.path.join(workdir, 'samples'), f'samples_step_{int(state.step)}', samples)
  outputs.say(f'Wrote {len(samples)} samples ({total_nfe // num_rounds} score evaluations each) to {path}')
  return samples


def run_likelihood(config, workdir, **_):
  """bpd of the held-out split under the EMA parameters, mean ± standard error, to likelihood.json."""
  state = _restore(config, workdir)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  dataset = datasets.get_dataset(config)
  bpd_fn = evaluate.get_bpd_fn(config, sde, dataset)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  key = jax.random.PRNGKey(config.seed + 2)
  batches = list(dataset.eval_batches())
  progress = outputs.Progress('likelihood', len(batches), 'batch')
  values = []
  for i, batch in enumerate(batches):
    values.append(bpd_fn(score_fn, batch['image'], [config.seed, i], jax.random.fold_in(key, i)))
    progress.update()
  progress.close()
  values = np.concatenate(values)
  bpd = evaluate.mean_stderr(values)
  result = {'step': int(state.step), 'bpd_mean': bpd['mean'], 'bpd_stderr': bpd['stderr'],
            'num_examples': int(len(values)), 'dataset': config.data.dataset}
  if parallel.is_main_process():
    with open(os.path.join(workdir, 'likelihood.json'), 'w') as f:
      json.dump(result, f, indent=2)
  outputs.say(f"bpd {result['bpd_mean']:.4f} ± {result['bpd_stderr']:.4f} over {len(values)} examples")
  return result


def run_eval(config, workdir, eval_folder='eval', **_):
  evaluate.checkpoint_steps(config, workdir)  # nothing to evaluate: say so before anything is written
  lock = workdir_lock.WorkdirLock(workdir, f'evaluation-{eval_folder}') if parallel.is_main_process() else None
  try:
    if lock:
      lock.acquire()
    return evaluate.evaluate(config, workdir, eval_folder)
  finally:
    if lock:
      lock.release()


MODES = {'train': run_train, 'sample': run_sample, 'likelihood': run_likelihood, 'eval': run_eval}


def run(config, workdir, mode, eval_folder='eval', config_path=''):
  """Runs `mode`; errors the user can fix come out as validate.ConfigError (exit code 2)."""
  try:
    return MODES[mode](config, workdir, eval_folder=eval_folder, config_path=config_path)
  except (datasets.DatasetError, evaluate.EvalError, train.CheckpointMismatch, workdir_lock.WorkdirBusy) as error:
    raise validate.ConfigError(str(error)) from None
