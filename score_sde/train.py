"""The training loop: data-parallel over all devices, resumable at any step, bit for bit."""
import json
import os
import sys
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from score_sde import checkpoints, datasets, losses, models, sampling, sde_lib, toy
from score_sde import images as image_utils


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class CheckpointMismatch(ValueError):
  """The workdir's checkpoints do not fit the config's train state."""


def data_shape(config):
  if config.data.dataset in toy.TOY_DISTRIBUTIONS:
    return (toy.get_toy_distribution(config.data.dataset).dim,)
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def create_train_state(config, rng):
  """The initial train state. Compiled: eager flax init of a U-Net dispatches op by op and takes twice as long
  (the values are the same bit for bit)."""
  model = models.get_model(config)
  shape = data_shape(config)

  def create(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng, 'dropout': init_rng}, jnp.zeros((1,) + shape), jnp.ones((1,)),
                           train=False)
    return losses.init_train_state(state_rng, variables['params'], losses.get_optimizer(config))
  return jax.jit(create)(rng)


def abstract_train_state(config):
  return jax.eval_shape(lambda: create_train_state(config, jax.random.PRNGKey(config.seed)))


def data_mesh():
  return Mesh(np.asarray(jax.devices()), ('data',))


def learning_rate(config, step):
  warmup = config.optim.warmup
  return config.optim.lr * (min(step / warmup, 1.) if warmup > 0 else 1.)


class MetricsLog:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard scalars."""

  def __init__(self, workdir, resume_step):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self.path):  # drop what a killed run logged after its last checkpoint
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    from clu import metric_writers
    self.writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'), asynchronous=False)

  def write(self, step, scalars):
    scalars = {k: float(v) for k, v in scalars.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self.writer.write_scalars(int(step), scalars)

  def close(self):
    self.writer.close()


def batch_sharding():
  """Splits the leading (batch) axis over every device."""
  return NamedSharding(data_mesh(), P('data'))


def global_batch(local_images, sharding):
  """A global array split over all devices, from this host's rows of the batch."""
  if jax.process_count() == 1:
    return jax.device_put(local_images, sharding)
  shape = (local_images.shape[0] * jax.process_count(),) + local_images.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_images, shape)


def full_batch(images, sharding):
  """A batch that every host holds whole, split over all devices: each host contributes its own rows."""
  return global_batch(images[datasets.host_rows(len(images))], sharding)


def get_sampler_and_score(config, sde, model, num_samples):
  shape = (num_samples,) + data_shape(config)
  sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config),
                                     sharding=batch_sharding())

  def score_fn(params):
    return models.get_score_fn(sde, model, {'params': params}, train=False, continuous=config.training.continuous)
  return sampler, score_fn


def save_samples(config, workdir, name, samples):
  os.makedirs(workdir, exist_ok=True)
  samples = np.asarray(samples)
  np.savez_compressed(os.path.join(workdir, f'{name}.npz'), samples=samples)
  path = os.path.join(workdir, f'{name}.png')
  if len(data_shape(config)) == 3:
    image_utils.save_image_grid(np.clip(samples, 0., 1.), path)
  else:
    image_utils.save_scatter(samples, path)
  return path


def train(config, workdir):
  """Trains from the latest good checkpoint in `workdir` (or from scratch) to training.n_iters."""
  tc = config.training
  dataset = datasets.get_dataset(config)  # a missing dataset fails before the workdir is touched
  scaler = datasets.get_data_scaler(config)
  sde = sde_lib.get_sde(config)
  model = models.get_model(config)
  optimizer = losses.get_optimizer(config)
  common = dict(sde=sde, model=model, reduce_mean=tc.reduce_mean, continuous=tc.continuous,
                likelihood_weighting=tc.likelihood_weighting)
  train_step = losses.get_step_fn(train=True, optimizer=optimizer, ema_rate=config.model.ema_rate, **common)
  eval_step = losses.get_step_fn(train=False, **common)

  replicated = NamedSharding(data_mesh(), P())
  by_batch = batch_sharding()

  run_checkpoints = checkpoints.RunCheckpoints(workdir)
  state = create_train_state(config, jax.random.PRNGKey(config.seed))
  restored = run_checkpoints.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resuming from step %d.', int(state.step))
  elif run_checkpoints.candidates():
    run_checkpoints.close()
    raise CheckpointMismatch(f'{workdir} has checkpoints, but none restores into the state this config builds '
                             '(a changed model or optimizer?); use a new --workdir or the original config.')
  checkpoints.save_config(workdir, config)
  state = jax.device_put(state, replicated)
  start = int(state.step)

  one_step = jax.jit(train_step)

  def run_steps(state, batches):
    """n_jitted_steps steps per host round trip. A host loop of jitted steps: on CPU, XLA runs
    a lax.scan of conv-net training steps ~6x slower than the same steps dispatched one by one."""
    metrics = []
    for i in range(len(batches)):
      state, step_metrics = one_step(state, batches[i])
      metrics.append(step_metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

  @jax.jit
  def run_eval(state, batch):
    return eval_step(state, batch)[1]['loss']

  train_iter = dataset.train_batches(start)

  def next_batches(n):
    return [{'image': global_batch(scaler(next(train_iter)['image']), by_batch)} for _ in range(n)]

  sampler, score_of = (get_sampler_and_score(config, sde, model, config.eval.get('num_snapshot_samples', 64))
                       if tc.snapshot_sampling else (None, None))
  eval_iter = iter(())
  log = MetricsLog(workdir, start)
  progress = _progress(start, tc.n_iters)
  k = tc.n_jitted_steps
  step, tick = start, time.perf_counter()
  try:
    while step < tc.n_iters:
      state, metrics = run_steps(state, next_batches(k))
      loss = np.asarray(metrics['loss'])
      if not np.all(np.isfinite(loss)):
        bad = step + int(np.argmin(np.isfinite(loss))) + 1
        raise TrainingDiverged(f'Loss is {loss[~np.isfinite(loss)][0]} at step {bad}; stopped. '
                               f'The last good checkpoint (step <= {step}) is kept in {workdir}.')
      step += k
      progress.update(k)
      if step % tc.log_freq == 0:
        now = time.perf_counter()
        log.write(step, {'loss': loss[-1], 'learning_rate': learning_rate(config, step - 1),
                         'grad_norm': np.asarray(metrics['grad_norm'])[-1],
                         'steps_per_sec': tc.log_freq / (now - tick)})
        tick = now
      if step % tc.eval_freq == 0:
        batch = next(eval_iter, None)
        if batch is None:
          eval_iter = dataset.eval_batches()
          batch = next(eval_iter)
        eval_batch = {'image': full_batch(scaler(batch['image']), by_batch)}
        log.write(step, {'eval_loss': run_eval(state, eval_batch)})
      permanent = step % tc.snapshot_freq == 0 or step == tc.n_iters
      if permanent or step % tc.snapshot_freq_for_preemption == 0:
        run_checkpoints.save(state, permanent=permanent)
      if permanent and sampler is not None:
        samples, _ = sampler(jax.random.fold_in(jax.random.PRNGKey(config.seed), step), score_of(state.params_ema))
        save_samples(config, os.path.join(workdir, 'samples'), f'iter_{step}', samples)
  finally:
    progress.close()
    log.close()
    run_checkpoints.close()
  return state


def _progress(start, total):
  if sys.stderr.isatty():
    from tqdm import tqdm
    return tqdm(initial=start, total=total, unit='step')

  class _Silent:
    def update(self, n):
      pass

    def close(self):
      pass
  return _Silent()
