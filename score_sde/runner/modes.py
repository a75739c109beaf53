"""What each --mode of run.py does: one table (`MODES`) from the mode's name to its function."""
import os

import jax
import numpy as np

from score_sde import atomic_files, datasets, models, parallel, sampling, sde_lib
from score_sde.registry import Registry
from score_sde.runner import (bpd_estimators, checkpoints, conditional_sampling, evaluate, outputs, run_state, train,
                              validate, workdir_lock)
from score_sde.runner.preemption import Preempted, Preemption


MODES = Registry('--mode')  # name -> run(config, workdir, eval_folder, config_path, preemption); info: help line


class RunFailed(RuntimeError):
  """A run that started but could not finish."""


def _newest_fitting_step(workdir, target):
  """The step a run would restore (None: nothing saved); CheckpointMismatch when steps are saved but none fits."""
  step = checkpoints.newest_fitting_step(workdir, target)
  if step is None and checkpoints.saved_steps(workdir):
    raise train.CheckpointMismatch(f'{workdir} has checkpoints, but none fits the state this config builds (a '
                                   'changed model or optimizer?); use a new --workdir or the original config.')
  return step


def _restore(config, workdir):
  target = run_state.abstract_train_state(config)
  _newest_fitting_step(workdir, target)
  state = checkpoints.restore(workdir, target)
  if state is None:
    raise RunFailed(f'no checkpoint in {workdir} restores; train again.')
  return state


@MODES.register('train', help='train from scratch, or resume from the latest good checkpoint in --workdir')
def run_train(config, workdir, config_path='', preemption=None, **_):
  dataset = datasets.get_dataset(config)  # a missing dataset is reported before the workdir is touched
  lock = workdir_lock.WorkdirLock(workdir, 'training') if parallel.is_main_process() else None
  try:
    if lock:
      lock.acquire()
    return train.train(config, workdir, dataset, config_path, preemption)
  except train.TrainingDiverged as error:
    raise RunFailed(str(error)) from None
  finally:
    if lock:
      lock.release()


@MODES.register('sample', help='eval.num_samples samples (sampling.method; sampling.condition for controllable '
                'generation)')
def run_sample(config, workdir, preemption=None, **_):
  """eval.num_samples samples from the EMA parameters, in rounds of eval.batch_size, to <workdir>/samples; a
  pre-emption between rounds stops it with nothing written (Preempted)."""
  state = _restore(config, workdir)
  if conditional_sampling.CONDITIONS.get(config.sampling.condition) is not None:
    return conditional_sampling.run(config, workdir, state, after_round=lambda r, n: _stop_if_preempted(
        preemption, r < n, f'{config.sampling.condition} round {r} of {n}'))
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
    _stop_if_preempted(preemption, r + 1 < num_rounds, f'sampling round {r + 1} of {num_rounds}')
  progress.close()
  samples = np.concatenate(rounds)[:config.eval.num_samples]
  path = outputs.save_samples(os.path.join(workdir, 'samples'), f'samples_step_{int(state.step)}', samples)
  outputs.say(f'Wrote {len(samples)} samples ({total_nfe // num_rounds} score evaluations each) to {path}')
  return samples


@MODES.register('likelihood', help='bits/dim of the held-out split: the probability-flow ODE, the score_flow '
                'bound, or both (eval.bpd_method)')
def run_likelihood(config, workdir, preemption=None, **_):
  """bpd of the held-out split under the EMA parameters, mean ± standard error, to likelihood.json: bpd_mean and
  bpd_stderr the probability-flow ODE's, bound_mean and bound_stderr the bound's, each with <name>_nfe and
  <name>_seconds_per_image; a pre-emption between batches stops it with nothing written (Preempted)."""
  state = _restore(config, workdir)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  dataset = datasets.get_dataset(config)
  estimators = evaluate.get_bpd_fn(config, sde, dataset)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=config.training.continuous)
  key = jax.random.PRNGKey(config.seed + 2)
  batches = list(dataset.eval_batches())
  progress = outputs.Progress('likelihood', len(batches), 'batch')
  done = {name: [] for name in estimators}
  for i, batch in enumerate(batches):
    for name, estimate in estimators.items():
      done[name].append(estimate(evaluate.bpd_score(config, score_fn, batch), batch['image'], [config.seed, i],
                                 jax.random.fold_in(key, i)))
    progress.update()
    _stop_if_preempted(preemption, i + 1 < len(batches), f'likelihood batch {i + 1} of {len(batches)}')
  progress.close()
  result = {'step': int(state.step)}
  for name, rounds in done.items():
    summary, values = bpd_estimators.summarize(name, [rounds])
    result.update({f'{name}_mean': summary[name]['mean'], f'{name}_stderr': summary[name]['stderr'],
                   **{k: v for k, v in summary.items() if k != name}})
  result.update({'num_examples': int(len(values)), 'dataset': config.data.dataset,
                 'bpd_method': config.eval.bpd_method,
                 'dequantization': bpd_estimators.dequantization(config, dataset.is_image)})
  if config.model.num_classes:  # a class-conditional model: of x given its label, or of x alone
    result['bpd_condition'] = config.eval.bpd_condition
  if parallel.is_main_process():
    atomic_files.write_json(os.path.join(workdir, 'likelihood.json'), result)
  for name in done:
    outputs.say(f"{name} {result[f'{name}_mean']:.4f} ± {result[f'{name}_stderr']:.4f} over {len(values)} examples "
                f"({bpd_estimators.LABELS[name]}; {result[f'{name}_nfe']:.0f} score evaluations and "
                f"{result[f'{name}_seconds_per_image']:.3g} s per image)")
  return result


@MODES.register('eval', help='FID/KID/IS of samples, bpd and held-out loss, over the checkpoints '
                'eval.begin_ckpt..eval.end_ckpt')
def run_eval(config, workdir, eval_folder='eval', preemption=None, **_):
  evaluate.checkpoint_steps(config, workdir)  # nothing to evaluate: say so before anything is written
  lock = workdir_lock.WorkdirLock(workdir, f'evaluation-{eval_folder}') if parallel.is_main_process() else None
  try:
    if lock:
      lock.acquire()
    return evaluate.evaluate(config, workdir, eval_folder, preemption)
  finally:
    if lock:
      lock.release()


def _stop_if_preempted(preemption, more_to_do, where):
  """Raises Preempted when asked to stop with work left; a mode that keeps no partial results writes nothing."""
  if more_to_do and preemption is not None and preemption.at_sync():
    raise Preempted(f'pre-empted ({preemption.received}) after {where}; nothing was written, the same command '
                    'starts over.')


def check(config, workdir, mode, eval_folder='eval', config_path=''):
  """Everything about a run that can be known before it starts, checked without writing anything; returns what
  the run would do, in one line. Problems raise as run() raises them (validate.ConfigError: exit code 2)."""
  spec = datasets.spec(config)
  needs_data = mode != 'sample' or conditional_sampling.CONDITIONS.get(config.sampling.condition) is not None
  try:
    if needs_data:
      datasets.get_dataset(config)  # missing data are reported here
    target = run_state.abstract_train_state(config)
    step = _newest_fitting_step(workdir, target)
    data = f"{config.data.dataset} {'x'.join(map(str, spec.shape))}"
    what = {
        'train': lambda: (f"train {config.model.name} ({run_state.num_params(target):,} parameters) on {data} with "
                          f"{config.training.sde} to step {config.training.n_iters}, "
                          + (f'resuming from step {step}' if step is not None else 'from scratch')),
        'sample': lambda: (f"sample {config.eval.num_samples} with {config.sampling.method} from step {step}"
                           if config.sampling.condition == 'none' else
                           f"sample with sampling.condition={config.sampling.condition} from step {step}"),
        'likelihood': lambda: (f'bits/dim of the held-out {data} ({bpd_estimators.describe(config.eval.bpd_method)}), '
                               f'from step {step}'),
        'eval': lambda: (f'evaluate the checkpoints of steps {evaluate.checkpoint_steps(config, workdir)} into '
                         f'{os.path.join(workdir, eval_folder)}'),
    }[mode]()
  except (datasets.DatasetError, evaluate.EvalError, train.CheckpointMismatch) as error:
    raise validate.ConfigError(str(error)) from None
  return f"check ok: {config_path or 'the config'} would {what} in {workdir}; nothing was written."


def run(config, workdir, mode, eval_folder='eval', config_path='', preemption=None):
  """Runs `mode`; errors the user can fix come out as validate.ConfigError (exit code 2), a pre-emption notice
  (an installed runner.preemption.Preemption) as Preempted once what can be kept is saved."""
  try:
    return MODES.get(mode)(config, workdir, eval_folder=eval_folder, config_path=config_path,
                           preemption=preemption or Preemption())
  except (datasets.DatasetError, evaluate.EvalError, train.CheckpointMismatch, workdir_lock.WorkdirBusy) as error:
    raise validate.ConfigError(str(error)) from None
