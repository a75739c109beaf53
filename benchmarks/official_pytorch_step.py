"""CPU time of one training step (and one no-grad forward) of the official PyTorch DDPM++ code.

Times yang-song/score_sde_pytorch itself, built the way its run_lib.train does, so that our JAX
step (benchmarks/network_speed.py) can be compared like for like: config
configs/vp/cifar10_ddpmpp_continuous.py with model.nf and batch overridden, 32x32x3 inputs in
[-1, 1], continuous VP loss (reduce_mean=True, no likelihood weighting, dropout active), backward,
optimize_fn (warmup, grad clip, Adam), EMA update; forward = score_model(x, t * 999) under
torch.no_grad() in eval mode. Needs torch (CPU wheel) in a separate venv and a copy of the official
repo; its op/ CUDA extension must be importable on CPU (DDPM++ has fir=False and never calls it).

  <torch venv>/bin/python benchmarks/official_pytorch_step.py --repo /path/to/score_sde_pytorch \
      --nf 64 --batch 16 --iters 10 --warmup 3 --threads 2 [--flush-denormal]

Prints one JSON line to stdout. With --serve it warms up, prints {"ready": ...} and then answers
stdin lines `train N` / `forward N` with a JSON list of N times in ms, until `quit`:
benchmarks/network_speed.py --official-repo uses this to interleave the two codes' steps.
"""
import argparse
import json
import os
import statistics
import sys
import time


def fail(message):
  print(f'official_pytorch_step: {message}', file=sys.stderr)
  sys.exit(2)


def timed(fn, iters, warmup):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return times


def profile(torch, train_step, warmup, steps=3):
  """Self CPU time per step of the step's ops, in four groups: convolutions (forward and backward),
  matrix products, GroupNorm and the rest."""
  timed(train_step, 0, warmup)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      train_step()
  groups = {}
  for event in prof.key_averages():
    name = event.key
    kind = ('convolution' if 'conv' in name else 'group_norm' if 'group_norm' in name else
            'matmul (attention, NIN, dense)' if any(k in name for k in ('mm', 'matmul', 'linear', 'einsum')) else
            'other')
    groups[kind] = groups.get(kind, 0.) + event.self_cpu_time_total / 1e3 / steps
  total = sum(groups.values())
  for kind, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
    print(f'  {kind:35s} {ms:8.0f} ms per step ({ms / total:.0%} of self CPU time)', file=sys.stderr)


def serve(calls, warmup, **info):
  """Warm up every call, then time `name N` requests from stdin (one JSON list of ms per line)."""
  for call in calls.values():
    timed(call, 0, warmup)
  print(json.dumps({'ready': True, **info}), flush=True)
  for line in sys.stdin:
    words = line.split()
    if not words or words[0] == 'quit':
      return
    name, count = words[0], int(words[1])
    print(json.dumps([round(ms, 1) for ms in timed(calls[name], count, 0)]), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repo', required=True, help='a clone of yang-song/score_sde_pytorch')
  parser.add_argument('--nf', type=int, default=64)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--flush-denormal', action='store_true')
  parser.add_argument('--serve', action='store_true', help='answer `train N` / `forward N` lines on stdin')
  parser.add_argument('--profile', action='store_true',
                      help='print torch.profiler self-CPU time per op class over 3 training steps (to stderr)')
  args = parser.parse_args()

  try:
    import torch
  except ImportError:
    fail('torch is not installed in this interpreter (use a venv with the torch CPU wheel)')
  repo = os.path.abspath(args.repo)
  needed = ['losses.py', 'sde_lib.py', 'models/ncsnpp.py', 'models/ema.py', 'configs/vp/cifar10_ddpmpp_continuous.py']
  missing = [p for p in needed if not os.path.isfile(os.path.join(repo, p))]
  if missing:
    fail(f'--repo {args.repo} is not a score_sde_pytorch checkout (missing {", ".join(missing)})')

  torch.set_num_threads(args.threads)
  flush = bool(torch.set_flush_denormal(True)) if args.flush_denormal else False
  sys.path.insert(0, repo)
  # As in the official run_lib: importing models.ncsnpp registers 'ncsnpp'.
  from models import ncsnpp  # noqa: F401
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage
  import losses
  import sde_lib
  from configs.vp.cifar10_ddpmpp_continuous import get_config

  config = get_config()
  config.model.nf = args.nf
  config.training.batch_size = args.batch
  config.device = torch.device('cpu')
  torch.manual_seed(config.seed)

  # Same construction as run_lib.train.
  score_model = mutils.create_model(config)
  ema = ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, score_model.parameters())
  state = dict(optimizer=optimizer, model=score_model, ema=ema, step=0)
  sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=config.model.num_scales)
  optimize_fn = losses.optimization_manager(config)
  train_step_fn = losses.get_step_fn(sde, train=True, optimize_fn=optimize_fn,
                                     reduce_mean=config.training.reduce_mean,
                                     continuous=config.training.continuous,
                                     likelihood_weighting=config.training.likelihood_weighting)
  shape = (args.batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  batch = torch.rand(shape) * 2. - 1.  # data.centered=True: inputs in [-1, 1]

  t = torch.rand(args.batch) * (sde.T - 1e-5) + 1e-5

  def train_step():  # the official loss puts the model in train mode itself (models/utils.get_model_fn)
    train_step_fn(state, batch).item()

  def forward():
    score_model.eval()
    with torch.no_grad():
      score_model(batch, t * 999)

  num_parameters = sum(p.numel() for p in score_model.parameters())
  if args.profile:
    profile(torch, train_step, args.warmup)
  if args.serve:
    serve({'train': train_step, 'forward': forward}, args.warmup, num_parameters=num_parameters,
          torch_version=torch.__version__)
    return
  train_ms = timed(train_step, args.iters, args.warmup)
  forward_ms = timed(forward, args.iters, args.warmup)

  a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
  matmul_ms = timed(lambda: torch.mm(a, b), 5, 1)
  gflops = 2 * 2048 ** 3 / (min(matmul_ms) * 1e-3) / 1e9

  print(json.dumps({
    'train_step_ms_median': round(statistics.median(train_ms), 1),
    'train_step_ms_min': round(min(train_ms), 1),
    'forward_nograd_ms_median': round(statistics.median(forward_ms), 1),
    'forward_nograd_ms_min': round(min(forward_ms), 1),
    'torch_matmul_2048_gflops_best': round(gflops, 1),
    'torch_version': torch.__version__,
    'num_parameters': num_parameters,
    'flush_denormal': flush,
    'threads': torch.get_num_threads(), 'nf': args.nf, 'batch': args.batch,
    'iters': args.iters, 'warmup': args.warmup,
    'train_step_ms_all': [round(x, 1) for x in train_ms],
    'forward_nograd_ms_all': [round(x, 1) for x in forward_ms],
  }))


if __name__ == '__main__':
  main()
