"""The training loop: data-parallel over all devices, resumable at any step, bit for bit.

On a pre-emption notice (runner/preemption.py) a single process finishes the step it is on, several processes the
step JAX's preemption sync point names (SIGTERM) or the chunk they are on (another signal); then the step is saved
to checkpoints-meta/, the save is checked to be the newest step on disk, and Preempted is raised. A restart resumes
there and ends bit-identical to an uninterrupted run: the batches depend only on (seed, step) and the random state
is in the checkpoint.
"""
import os
import time

import jax
import numpy as np

from score_sde import datasets, losses, models, parallel, sampling, sde_lib
from score_sde.runner import checkpoints, outputs, run_state
from score_sde.runner.preemption import Preempted, Preemption


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class CheckpointMismatch(ValueError):
  """The workdir's checkpoints do not fit the config's train state."""


def next_stop(step, config):
  """The end of the chunk that starts after `step`: the next log, eval, snapshot or final step, and at most
  n_jitted_steps ahead. Whatever the frequencies, every event then happens at exactly its step."""
  tc = config.training
  events = [tc.log_freq, tc.eval_freq, tc.snapshot_freq, tc.snapshot_freq_for_preemption]
  return min([tc.n_iters, step + tc.n_jitted_steps] + [(step // f + 1) * f for f in events])


def snapshot_sampler(config, sde, model):
  """sample(params, rng) -> samples in [0, 1] for the grid saved with every permanent checkpoint."""
  shape = (config.eval.num_snapshot_samples,) + datasets.spec(config).shape
  sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config),
                                     sharding=parallel.batch_sharding())

  def sample(params, rng):
    score_fn = models.get_score_fn(sde, model, {'params': params}, train=False, continuous=config.training.continuous)
    return sampler(rng, score_fn)[0]
  return sample


def train(config, workdir, dataset=None, config_path='', preemption=None):
  """Trains from the latest good checkpoint in `workdir` (or from scratch) to training.n_iters; raises Preempted
  after saving when `preemption` (an installed runner.preemption.Preemption) asks to stop."""
  tc = config.training
  preemption = preemption or Preemption()
  dataset = dataset or datasets.get_dataset(config)  # a missing dataset fails before the workdir is touched
  scaler = datasets.get_data_scaler(config)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  optimizer = losses.get_optimizer(config)
  common = dict(sde=sde, model=model, **losses.loss_options(config))
  # A host loop of jitted steps: on CPU, XLA runs a lax.scan of conv-net training steps ~6x slower than the same
  # steps dispatched one by one. n_jitted_steps caps how many are dispatched between two host syncs.
  train_step = jax.jit(losses.get_step_fn(train=True, optimizer=optimizer, ema_rate=config.model.ema_rate, **common))
  eval_loss = losses.get_step_fn(train=False, **common)
  eval_step = jax.jit(lambda state, batch: eval_loss(state, batch)[1]['loss'])
  learning_rate = losses.learning_rate_schedule(config)

  if parallel.is_main_process():
    for folder in checkpoints.remove_unfinished_saves(workdir):
      outputs.say(f'Removed {folder}: an unfinished checkpoint save of an earlier run (never a step).')
  run_checkpoints = checkpoints.RunCheckpoints(workdir)
  state = run_state.create_train_state(config, jax.random.PRNGKey(config.seed))
  restored = run_checkpoints.restore(state)
  if restored is None and run_checkpoints.candidates():
    run_checkpoints.close()
    raise CheckpointMismatch(f'{workdir} has checkpoints, but none restores into the state this config builds '
                             '(a changed model or optimizer?); use a new --workdir or the original config.')
  state = jax.device_put(restored or state, parallel.replicated())
  start = int(state.step)
  if parallel.is_main_process():
    checkpoints.save_config(workdir, config)
  outputs.say(f'Training {config_path or "a config"}: {run_state.num_params(state):,} parameters, '
              f'{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} device(s), '
              f'workdir {workdir}, ' + (f'resuming from step {start}' if restored else 'starting from scratch') +
              f', to step {tc.n_iters}{outputs.record_class_names(workdir, dataset.class_names)}.')

  train_iter = dataset.train_batches(start)
  eval_iter = iter(())
  sample = snapshot_sampler(config, sde, model) if tc.snapshot_sampling else None
  log = outputs.MetricsLog(workdir, start)
  progress = outputs.Progress('train', tc.n_iters, 'step', initial=start)
  step, tick, tick_step = start, time.perf_counter(), start
  try:
    while step < tc.n_iters:
      stop = next_stop(step, config)
      chunk = []
      for _ in range(stop - step):
        batch = jax.tree.map(parallel.global_batch, losses.loss_batch(model, next(train_iter), scaler))
        state, metrics = train_step(state, batch)
        chunk.append(metrics)
        if preemption.at_step(step + len(chunk)):
          break
      loss = np.asarray([parallel.to_host(m['loss']) for m in chunk])
      if not np.all(np.isfinite(loss)):
        bad = step + int(np.argmin(np.isfinite(loss))) + 1
        raise TrainingDiverged(f'Loss is {loss[~np.isfinite(loss)][0]} at step {bad}; stopped. '
                               f'The last good checkpoint (step <= {step}) is kept in {workdir}.')
      step += len(chunk)  # `stop`, unless pre-empted: then no event falls on this step (events end chunks)
      if step % tc.log_freq == 0:
        now = time.perf_counter()
        rate = (step - tick_step) / (now - tick)
        log.write(step, {'loss': loss[-1], 'learning_rate': learning_rate(step - 1),
                         'grad_norm': parallel.to_host(chunk[-1]['grad_norm']), 'steps_per_sec': rate})
        progress.update(step - tick_step, note=f'loss {loss[-1]:.4g}')
        tick, tick_step = now, step
      if step % tc.eval_freq == 0:
        batch = next(eval_iter, None)
        if batch is None:
          eval_iter = dataset.eval_batches()
          batch = next(eval_iter)
        eval_batch = jax.tree.map(parallel.full_batch, losses.loss_batch(model, batch, scaler))
        log.write(step, {'eval_loss': parallel.to_host(eval_step(state, eval_batch))})
      permanent = step % tc.snapshot_freq == 0 or step == tc.n_iters
      if permanent or step % tc.snapshot_freq_for_preemption == 0:
        run_checkpoints.save(state, permanent=permanent)
      if permanent and sample is not None:
        samples = sample(state.params_ema, jax.random.fold_in(jax.random.PRNGKey(config.seed), step))
        outputs.save_samples(os.path.join(workdir, 'samples'), f'iter_{step}', parallel.to_host(samples))
      if step < tc.n_iters and preemption.at_sync(step):
        folder = run_checkpoints.save_to_resume(state)
        raise Preempted(f'pre-empted ({preemption.received}) at step {step}: saved {folder}; the same command '
                        'resumes from there.')
  finally:
    progress.close()
    log.close()
    run_checkpoints.close()
  return state
