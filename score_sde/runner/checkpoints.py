"""Orbax checkpoints of a run: pre-emption snapshots (keep 1) and permanent ones.

<workdir>/checkpoints-meta/<step>   the latest pre-emption snapshot
<workdir>/checkpoints/<step>        every training.snapshot_freq steps
<workdir>/config.json               the run's config, so `restore(workdir)` needs nothing else

orbax writes a step into <step>.orbax-checkpoint-tmp... and renames it to <step> once every file is written, so a
save that fails (disk full, file too large) or is killed leaves no step behind, only that temporary folder; the
next training removes it (remove_unfinished_saves). A save that fails raises WriteFailed naming the step, the
folder and the errno text.
"""
import json
import os
import re
import shutil

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from score_sde import atomic_files, config_table, parallel
from score_sde.runner import run_state, write_errors

PREEMPTION_DIR = 'checkpoints-meta'
PERMANENT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
_UNFINISHED_SAVE = re.compile(r'^\d+\.orbax-checkpoint-tmp')


def _manager(workdir, subdir, max_to_keep):
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, subdir)),
                               options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def has_checkpoint(workdir):
  return any(os.path.isdir(os.path.join(workdir, d)) and os.listdir(os.path.join(workdir, d))
             for d in (PREEMPTION_DIR, PERMANENT_DIR))


class RunCheckpoints:
  """Saves a train state to both kinds of checkpoint and restores the latest good one."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.failed = False
    self.preemption = _manager(workdir, PREEMPTION_DIR, 1)
    self.permanent = _manager(workdir, PERMANENT_DIR, None)

  def save(self, state, permanent=False):
    step = int(jax.device_get(state.step))
    managers = [self.preemption] + ([self.permanent] if permanent else [])
    for manager in managers:  # one after the other: across processes, orbax's barriers are named by the step
      if step not in manager.all_steps():
        try:
          manager.save(step, args=ocp.args.StandardSave(state))
          manager.wait_until_finished()
        except Exception as error:  # orbax and tensorstore raise many kinds; the errno inside says why
          self.failed = True
          kept = [s for s, _ in saved_steps(self.workdir)]
          raise write_errors.WriteFailed(
              f'cannot write the checkpoint of step {step} to {manager.directory}: {write_errors.reason(error)}; '
              + (f'the last good checkpoint (step {kept[0]}) is kept' if kept else 'no checkpoint was saved before')
              + '; once the folder can be written, the same command resumes from there.') from error
    return step

  def save_to_resume(self, state):
    """Saves `state` for a restart (unless its step is saved already), waits until orbax has finalized it and
    checks on disk that it is the newest step; returns its folder."""
    step = self.save(state)
    newest = saved_steps(self.workdir)
    if not newest or newest[0][0] != step:
      raise write_errors.WriteFailed(f'the checkpoint of step {step} is not the newest step in {self.workdir} after '
                                     f'its save (found {[s for s, _ in newest[:3]]}).')
    return newest[0][1]

  def candidates(self):
    """(step, manager) of every saved step, newest first."""
    found = [(step, m) for m in (self.preemption, self.permanent) for step in m.all_steps()]
    return sorted(found, key=lambda item: -item[0])

  def restore(self, target):
    """The newest checkpoint that restores; a corrupt or partial one is skipped with a warning.

    Arrays come back replicated over this process's devices, whatever devices saved them.
    """
    target = _replicated_abstract(target)
    wanted = _shapes(target)
    for step, manager in self.candidates():
      saved = _saved_shapes(manager, step)
      if saved is not None and saved != wanted:  # another model or optimizer: refuse without a failing restore
        logging.warning('Skipping checkpoint %d in %s: its arrays do not fit this config.', step, manager.directory)
        continue
      try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as error:  # orbax raises many kinds on a damaged checkpoint
        logging.warning('Skipping checkpoint %d in %s, which does not restore: %s',
                        step, manager.directory, str(error).splitlines()[0][:200])
    return None

  def close(self):
    try:
      self.preemption.close()
      self.permanent.close()
    except Exception:  # after a failed save orbax may raise its error again; the first report is the one to keep
      if not self.failed:
        raise


def _shapes(tree):
  return sorted(tuple(x.shape) for x in jax.tree.leaves(tree))


def _shapes_in(folder):
  """The array shapes a saved step's folder holds, from its metadata alone; None if that cannot be read."""
  try:
    # orbax reads no metadata from a relative path (it returns an empty tree), so every step would look unfit
    metadata = ocp.StandardCheckpointer().metadata(os.path.abspath(os.path.join(folder, 'default')))
    return _shapes(getattr(metadata, 'item_metadata', metadata))
  except Exception:  # a damaged checkpoint: a restore decides
    return None


def _saved_shapes(manager, step):
  return _shapes_in(os.path.join(str(manager.directory), str(step)))


def saved_steps(workdir):
  """(step, folder) of every finished checkpoint of a run, newest first, read from its folders alone: nothing
  is created or changed (orbax's unfinished saves end in -tmp... and are not steps)."""
  found = []
  for sub in (PREEMPTION_DIR, PERMANENT_DIR):
    folder = os.path.join(workdir, sub)
    if os.path.isdir(folder):
      found += [(int(d), os.path.join(folder, d)) for d in os.listdir(folder) if d.isdigit()]
  return sorted(found, key=lambda item: -item[0])


def remove_unfinished_saves(workdir):
  """Deletes the temporary folders of saves that never finished (<step>.orbax-checkpoint-tmp...: a failed or
  killed save; orbax never counts them as steps) and returns their paths. Call it only while holding the training
  lock: a live training's save in progress looks the same."""
  removed = []
  for sub in (PREEMPTION_DIR, PERMANENT_DIR):
    folder = os.path.join(workdir, sub)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      if _UNFINISHED_SAVE.match(name):
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        removed.append(os.path.join(folder, name))
  return removed


def newest_fitting_step(workdir, target):
  """The newest saved step whose arrays fit `target` by their metadata (or cannot be read, so a restore would
  try it), or None. Reads only."""
  wanted = _shapes(target)
  for step, folder in saved_steps(workdir):
    saved = _shapes_in(folder)
    if saved is None or saved == wanted:
      return step
  return None


def restore_step(workdir, step, target):
  """The permanent checkpoint of `step`, replicated over this process's devices."""
  manager = _manager(workdir, PERMANENT_DIR, None)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(_replicated_abstract(target)))
  finally:
    manager.close()


def _replicated_abstract(tree):
  sharding = parallel.replicated()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def save_config(workdir, config):
  atomic_files.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def load_config(workdir):
  """The run's config as it was saved; JSON's lists become the configs' tuples (ch_mult, ...) again."""
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return config_table.with_defaults(ml_collections.ConfigDict(_tuples(json.load(f))))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def restore(workdir, target=None):
  """The latest good train state of a run (step, params, params_ema, opt_state, rng), or None.

  Without `target`, the state's structure is rebuilt from the run's saved config.
  """
  if target is None:
    target = run_state.abstract_train_state(load_config(workdir))
  checkpoints = RunCheckpoints(workdir)
  try:
    return checkpoints.restore(target)
  finally:
    checkpoints.close()
