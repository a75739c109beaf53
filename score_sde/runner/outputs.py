"""What a run writes and prints: metrics.jsonl and TensorBoard scalars, sample files, progress lines.

Only process 0 writes; the other processes get objects that do nothing.
"""
import json
import os
import sys
import time

import numpy as np

from score_sde import atomic_files, parallel
from score_sde.runner import images


class MetricsLog:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard scalars."""

  def __init__(self, workdir, resume_step):
    self.active = parallel.is_main_process()
    if not self.active:
      return
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self.path):  # drop what a killed run logged after its last checkpoint, and any cut-off line
      with open(self.path) as f:
        kept = [line for line in f if _logged_step(line) is not None and _logged_step(line) <= resume_step]
      atomic_files.write_text(self.path, ''.join(kept))
    from clu import metric_writers
    self.writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'), asynchronous=False)

  def write(self, step, scalars):
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    except OSError as error:  # a failed write() does not name its file; the error line should
      raise OSError(error.errno, error.strerror, self.path) from error
    self.writer.write_scalars(int(step), scalars)

  def close(self):
    if self.active:
      self.writer.close()


def _logged_step(line):
  """The step of a metrics.jsonl line, or None for a line that a killed run or a full disk cut short."""
  try:
    return json.loads(line).get('step', 0) if line.endswith('\n') else None
  except json.JSONDecodeError:
    return None


def save_samples(folder, name, samples):
  """<folder>/<name>.npz and a picture: an image grid, or a scatter plot of 2-D points. Process 0 only."""
  if not parallel.is_main_process():
    return None
  os.makedirs(folder, exist_ok=True)
  samples = np.asarray(samples)
  atomic_files.savez(os.path.join(folder, f'{name}.npz'), compressed=True, samples=samples)
  path = os.path.join(folder, f'{name}.png')
  if samples.ndim == 4:
    images.save_image_grid(np.clip(samples, 0., 1.), path)
  else:
    images.save_scatter(samples, path)
  return path


def record_class_names(workdir, names):
  """Writes <workdir>/class_names.json ({index: name}) for data whose classes have names (image folders); returns
  the note for the start line ('' without names)."""
  if not names:
    return ''
  if parallel.is_main_process():
    atomic_files.write_json(os.path.join(workdir, 'class_names.json'), {str(k): n for k, n in enumerate(names)})
  shown = ', '.join(f'{k}={n}' for k, n in enumerate(names[:10])) + (', ...' if len(names) > 10 else '')
  return f'; {len(names)} classes {shown} (class_names.json)'


def say(message):
  """One line for the user (process 0 only)."""
  if parallel.is_main_process():
    print(message, flush=True)


def _duration(seconds):
  seconds = int(round(seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class Progress:
  """tqdm on a terminal; elsewhere (a batch scheduler's log) one line per update with the rate and an ETA."""

  def __init__(self, description, total, unit, initial=0):
    self.description, self.total, self.unit = description, total, unit
    self.done, self.start, self.start_count = initial, time.perf_counter(), initial
    self.bar = None
    if not parallel.is_main_process():
      self.total = None
    elif sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(desc=description, initial=initial, total=total, unit=unit)

  def update(self, n=1, note=''):
    self.done += n
    if self.total is None:
      return
    if self.bar is not None:
      self.bar.update(n)
      if note:
        self.bar.set_postfix_str(note)
      return
    elapsed = time.perf_counter() - self.start
    rate = (self.done - self.start_count) / max(elapsed, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    plural = self.unit + ('es' if self.unit.endswith(('s', 'sh', 'ch', 'x')) else 's')
    print(f'{self.description}: {self.done}/{self.total} {plural}, {rate:.3g} {self.unit}/s, '
          f'ETA {_duration(eta) if np.isfinite(eta) else "?"}' + (f', {note}' if note else ''),
          file=sys.stderr, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()
