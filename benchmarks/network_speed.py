"""Speed of DDPM++ on CPU beside the official PyTorch code: a forward pass and a training step.

Setup of the official anchor (the reference fixture timing_official_pytorch_cpu.json):
configs/vp/cifar10_ddpmpp_continuous.py with model.nf = 64, batch 16, 32x32x3; the
training step is the continuous VP loss (reduce_mean, dropout 0.1 active), its gradient,
warmup + global-norm clipping + Adam, and the EMA update, all in one jitted call.
Statistic: median over --iters timed calls after --warmup calls (compile time excluded).

  python benchmarks/network_speed.py [--nf 64] [--batch 16] [--donate] [--conv-dtype bfloat16] [--step-only]
  SCORE_SDE_XLA_FLAGS= python benchmarks/network_speed.py      # without score_sde's default XLA flags
  python benchmarks/network_speed.py --official-repo ~/score_sde_pytorch --official-python ~/torchvenv/bin/python

With --official-repo (a clone of yang-song/score_sde_pytorch, and an interpreter with the torch CPU wheel), the
official step runs in a second process (benchmarks/official_pytorch_step.py --serve) and the two codes' calls are
interleaved, --per-round calls each for --rounds rounds, so both see the same machine: the direct like-for-like
comparison. The official process waits idle while ours runs, and the other way round.

The matmul-anchored number is the last line's ratio, measured in the same run: 252.5 GFLOP
(fixed: XLA's count for the official JAX step, so a changed graph cannot move it) / median step
time / best rate of a jitted 2048^2 float32 jnp.dot. The official PyTorch step was at 0.55 of it
on the reference machine (1.79 s against 258 GFLOP/s); on a CPU whose matmul is faster (this machine
type now: 410-450 GFLOP/s) it sits lower (0.47-0.49), so --official-repo is the like-for-like number.
"""
import argparse
import collections
import glob
import gzip
import importlib.util
import json
import re
import shutil
import tempfile
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL_JSON = REPO.parent / 'shared' / 'reference' / 'timing_official_pytorch_cpu.json'
OFFICIAL_FALLBACK = {'train_step_ms_median': 1906.7, 'forward_nograd_ms_median': 526.9}  # first run in that file
STEP_GFLOP = 252.5  # XLA's cost analysis of the official JAX step, nf=64, batch 16
OFFICIAL_RATIO = 0.55  # official PyTorch step, 1.79 s, against a 258 GFLOP/s matmul, on the reference machine


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--nf', type=int, default=64)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--donate', action='store_true', help='jit the step with donate_argnums=0')
  parser.add_argument('--conv-dtype', default=None, help='config.model.conv_dtype, e.g. bfloat16')
  parser.add_argument('--step-only', action='store_true', help='time only the training step')
  parser.add_argument('--profile', action='store_true', help='trace 3 training steps and break their time down (misses the work of '
                      "YNN's own threads, so it undercounts convolutions under the default flags)")
  parser.add_argument('--conv-census', action='store_true',
                      help='time every convolution of the network alone (forward + both gradients) and sum them')
  parser.add_argument('--official-repo', help='a clone of yang-song/score_sde_pytorch: time it interleaved with ours')
  parser.add_argument('--official-python', default=os.environ.get('SCORE_SDE_TORCH_PYTHON', sys.executable),
                      help='interpreter with torch for --official-repo (default $SCORE_SDE_TORCH_PYTHON or this one)')
  parser.add_argument('--rounds', type=int, default=6, help='interleaved rounds with --official-repo')
  parser.add_argument('--per-round', type=int, default=2, help='calls of each code per round')
  return parser.parse_args()


def load_config(nf):
  path = REPO / 'configs' / 'vp' / 'cifar10_ddpmpp_continuous.py'
  spec = importlib.util.spec_from_file_location('ddpmpp_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.nf = nf
  return config


def timed(call, iters, warmup):
  """Median and min wall ms, median process-CPU ms of `call()` (which blocks)."""
  for _ in range(warmup):
    call()
  times, cpu = [], []
  for _ in range(iters):
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    times.append(1e3 * (time.perf_counter() - start))
    cpu.append(1e3 * (time.process_time() - start_cpu))
  return statistics.median(times), min(times), statistics.median(cpu)


def fail(message):
  """Bad input: one line, exit code 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


class OfficialPyTorch:
  """The official step in its own process (official_pytorch_step.py --serve), timed on request."""

  def __init__(self, python, repo, nf, batch):
    script = REPO / 'benchmarks' / 'official_pytorch_step.py'
    self.stderr = tempfile.TemporaryFile('w+')
    self.process = subprocess.Popen(
        [python, str(script), '--repo', repo, '--nf', str(nf), '--batch', str(batch), '--serve'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
    ready = self.process.stdout.readline()
    if not ready:
      self.process.wait()
      self.stderr.seek(0)
      last = ([line.strip() for line in self.stderr if line.strip()] or ['no message'])[-1]
      fail(f'the official PyTorch step did not start ({last}); check --official-repo and --official-python')
    self.info = json.loads(ready)

  def times(self, name, count):
    self.process.stdin.write(f'{name} {count}\n')
    self.process.stdin.flush()
    return json.loads(self.process.stdout.readline())

  def close(self):
    self.process.stdin.write('quit\n')
    self.process.stdin.close()
    self.process.wait()


def interleaved(call, official, name, rounds, per_round, warmup):
  """Our and the official wall ms, `per_round` calls of each in turn for `rounds` rounds."""
  for _ in range(warmup):
    call()
  ours, theirs = [], []
  for _ in range(rounds):
    for _ in range(per_round):
      start = time.perf_counter()
      call()
      ours.append(1e3 * (time.perf_counter() - start))
    theirs += official.times(name, per_round)
  return ours, theirs


def matmul_gflops(n=2048, iters=20):
  """Best rate of a jitted n x n float32 jnp.dot."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n))
  dot = jax.jit(jnp.dot)
  _, best, _ = timed(lambda: dot(a, b).block_until_ready(), iters, 3)
  return 2 * n ** 3 / best / 1e6


def _hlo_index(hlo_text):
  """Instruction name -> (kind of work, op_name metadata) for every instruction of a compiled HLO module."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r'(?:ENTRY )?%(\S+) \(.*\{$', line)
    if head:
      current = computations.setdefault(head.group(1), [])
    elif current is not None and ' = ' in line:
      current.append(line)

  def kind(lines):
    ops = {m.group(1) for m in (re.search(r'= \S+ ([a-z\-]+)\(', l) for l in lines) if m}
    calls = [c for l in lines for c in re.findall(r'calls=%([\w.\-]+)', l)]
    for c in calls:
      ops |= {kind(computations.get(c, []))}
    for name, marks in (('convolution', {'convolution', 'convolution (ynn/fused)'}), ('dot', {'dot'}),
                        ('rng (threefry)', {'xor', 'shift-right-logical', 'rng (threefry)'}),
                        ('reduce', {'reduce', 'reduce-window'})):
      if ops & marks:
        return name
    if ops <= {'parameter', 'transpose', 'copy', 'bitcast', 'reshape', 'tuple', 'get-tuple-element',
               'transpose/copy'}:
      return 'transpose/copy'
    return 'elementwise/other'

  index = {}
  for comp, lines in computations.items():
    for line in lines:
      name = re.match(r'\s*(?:ROOT )?%(\S+) = ', line)
      if not name:
        continue
      called = re.findall(r'calls=%([\w.\-]+)', line)
      opcode = re.search(r'= \S+ ([a-z\-]+)\(', line) or re.search(r'= \(.*?\) ([a-z\-]+)\(', line)
      what = kind([computations.get(c, []) for c in called][0]) if called else kind([line])
      if opcode and opcode.group(1) == 'copy':
        what = 'transpose/copy'
      if opcode and opcode.group(1) == 'fusion' and name.group(1).startswith('transpose_copy'):
        what = 'transpose/copy'
      op_name = re.search(r'op_name="([^"]*)"', ' '.join([line] + [l for c in called for l in computations.get(c, [])
                                                                    if 'op_name' in l][-1:]))
      index[name.group(1)] = (what, op_name.group(1) if op_name else '')
  return index


def _module_of(op_name):
  """The innermost flax module class on an op_name path (AttnBlockpp_0/NIN_2/... -> NIN), or the step part."""
  parts = [re.sub(r'_\d+$', '', p) for p in op_name.split('/') if re.match(r'[A-Z]\w*_\d+$', p)]
  for group in ('Dropout', 'GroupNorm', 'AttnBlockpp'):
    if group in parts:
      return group
  if parts:
    return parts[-1]
  return 'outside the network (loss, optimizer, EMA)' if 'NCSNpp' not in op_name else 'NCSNpp (own ops)'


def conv_census(model, params, x, t):
  """Each distinct convolution of the forward pass, timed alone with both gradients (best of 7): the time the
  step's convolutions would take at their stand-alone speed."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, x, t, train=False))(params)
  convs = {}  # (shapes, params text) -> [count, shapes, params]

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        shapes = tuple(tuple(v.aval.shape) for v in eqn.invars)
        convs.setdefault((shapes, repr(sorted(eqn.params.items()))), [0, shapes, eqn.params])[0] += 1
      for value in eqn.params.values():
        if hasattr(value, 'jaxpr'):
          walk(value.jaxpr)

  walk(jaxpr.jaxpr)
  total_ms = total_flop = 0.
  print('\nConvolutions of the forward pass, each timed alone with its two gradients:')
  for count, (lhs_shape, rhs_shape), params in sorted(convs.values(), key=lambda c: c[1]):
    lhs = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
    rhs = 0.05 * jax.random.normal(jax.random.PRNGKey(1), rhs_shape)
    conv = lambda a, b, params=params: jax.lax.conv_general_dilated_p.bind(a, b, **params)
    out = conv(lhs, rhs)
    grads = jax.jit(jax.grad(lambda a, b, out=out, conv=conv: jnp.sum(conv(a, b) * out), argnums=(0, 1)))
    _, best, _ = timed(lambda: jax.block_until_ready(grads(lhs, rhs)), 7, 2)
    flop = 3 * 2 * out.size * rhs.size / rhs_shape[-1]  # forward, input and kernel gradients
    total_ms += count * best
    total_flop += count * flop
    print(f'  {count:3d} x {str(lhs_shape):18s} * {str(rhs_shape):18s} -> {str(out.shape):18s} '
          f'{best:6.1f} ms {flop / best / 1e6:5.0f} GFLOP/s')
  print(f'  all: {total_ms:.0f} ms, {total_flop / 1e9:.1f} GFLOP, {total_flop / total_ms / 1e6:.0f} GFLOP/s')
  return total_ms


def profile(compiled, call, steps=3):
  """Per-thunk XLA time of `steps` calls, by kind of work and by flax module, as fractions of the total."""
  import jax  # pylint: disable=import-outside-toplevel
  index = _hlo_index(compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        call()
    wall = (time.perf_counter() - start) / steps
    path, = glob.glob(f'{tmp}/**/perfetto_trace.json.gz', recursive=True)
    events = json.load(gzip.open(path))
  events = events['traceEvents'] if isinstance(events, dict) else events
  by_kind, by_module, total = collections.Counter(), collections.Counter(), 0.
  for e in events:
    op = (e.get('args') or {}).get('hlo_op')
    if e.get('ph') != 'X' or not op or op not in index or e['name'].startswith('end:'):
      continue
    what, op_name = index[op]
    if what == 'elementwise/other' and ('while' in op or 'call' in op):
      continue  # a loop or call thunk: its body's thunks are counted themselves
    by_kind[what] += e['dur']
    by_module[_module_of(op_name)] += e['dur']
    total += e['dur']
  busy = total / steps / 1e3
  print(f'\nProfile of {steps} training steps: {wall * 1e3:.0f} ms wall per step, thunks busy {busy:.0f} ms '
        f'per step ({busy / wall / 1e3:.2f} of the 2 cores\' worth of wall time counts twice)')
  for title, counter in (('by kind of work', by_kind), ('by flax module (innermost)', by_module)):
    print(f'  {title}:')
    for name, dur in counter.most_common(12):
      print(f'    {name:45s} {dur / total:6.1%} {dur / steps / 1e3:8.0f} ms')


def main():
  args = parse_args()
  if args.official_repo:
    if not (pathlib.Path(args.official_repo) / 'models' / 'ncsnpp.py').is_file():
      fail(f'--official-repo {args.official_repo} is not a clone of yang-song/score_sde_pytorch '
           '(no models/ncsnpp.py)')
    if not shutil.which(args.official_python):
      fail(f'--official-python {args.official_python} is not an interpreter; give one with torch installed')
  same_run, same_run_ms = None, {}
  if args.official_repo:
    same_run = OfficialPyTorch(args.official_python, args.official_repo, args.nf, args.batch)
    print(f'official PyTorch (torch {same_run.info["torch_version"]}, {same_run.info["num_parameters"]:,} '
          f'parameters) runs interleaved with ours: {args.rounds} rounds of {args.per_round} calls each', flush=True)
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=import-outside-toplevel
  import score_sde  # pylint: disable=import-outside-toplevel,unused-import  (sets XLA_FLAGS before the backend starts)
  from score_sde import losses, models, sde_lib  # pylint: disable=import-outside-toplevel

  config = load_config(args.nf)
  if args.conv_dtype:
    config.model.conv_dtype = args.conv_dtype
  matmul = [matmul_gflops()]
  model = models.get_model(config)
  sde = sde_lib.get_sde(config)
  size = config.data.image_size
  rng = jax.random.PRNGKey(0)
  x = jax.random.uniform(rng, (args.batch, size, size, 3), minval=-1., maxval=1.)
  t = jax.random.uniform(jax.random.PRNGKey(1), (args.batch,), minval=1e-5, maxval=1.)
  params = jax.jit(lambda k: model.init(k, x, t * 999, train=False))(rng)['params']
  n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))

  rows = []

  def bench(label, fn, fn_args, official=None, official_name=None, donate=False, profile_it=False):
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=0 if donate else ()).lower(*fn_args).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get('flops', float('nan'))
    if donate:  # the step consumes its state: feed each call's state to the next, as a training loop does
      carry = [jax.tree.map(lambda a: a.copy(), fn_args[0])]
      def call():
        carry[0] = jax.block_until_ready(compiled(carry[0], *fn_args[1:])[0])
    else:
      def call():
        jax.block_until_ready(compiled(*fn_args))
    if same_run and official_name:
      start_cpu = time.process_time()
      ours, theirs = interleaved(call, same_run, official_name, args.rounds, args.per_round, args.warmup)
      med, best = statistics.median(ours), min(ours)
      cpu = 1e3 * (time.process_time() - start_cpu) / (len(ours) + args.warmup)  # ours only: torch is another process
      official = statistics.median(theirs)
      same_run_ms[official_name] = (ours, theirs)
    else:
      med, best, cpu = timed(call, args.iters, args.warmup)
    if profile_it:
      profile(compiled, call)
    rows.append((label, med, best, cpu, compile_s, flops / 1e9, flops / 1e6 / med, official))
    print(f'  {label}: {med:.1f} ms', flush=True)
    return med

  official = dict(OFFICIAL_FALLBACK)
  if OFFICIAL_JSON.exists():
    official.update(json.loads(OFFICIAL_JSON.read_text())['runs'][0])

  print(f'DDPM++ nf={args.nf}, batch {args.batch}, {size}x{size}x3, {n_params:,} parameters; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; conv_dtype={config.model.get("conv_dtype", "float32")}; '
        f'donate={args.donate}',
        flush=True)

  loss_fn = losses.get_sde_loss_fn(sde, model, train=True, reduce_mean=True, continuous=True)
  batch = {'image': x}
  if not args.step_only:
    bench('forward (eval, t*999)', lambda p, x, t: model.apply({'params': p}, x, t * 999, train=False),
          (params, x, t), official['forward_nograd_ms_median'], official_name='forward')
    bench('loss forward (train mode)', lambda p, b, r: loss_fn(r, p, b), (params, batch, rng))
    bench('loss value_and_grad', lambda p, b, r: jax.value_and_grad(loss_fn, argnums=1)(r, p, b),
          (params, batch, rng))

  optimizer = losses.get_optimizer(config)
  step_fn = losses.get_step_fn(sde, model, train=True, optimizer=optimizer, reduce_mean=True, continuous=True,
                               ema_rate=config.model.ema_rate)
  state = losses.init_train_state(rng, params, optimizer)
  step_ms = bench('train step (grad + clip + Adam + EMA)', step_fn, (state, batch),
                  official['train_step_ms_median'], official_name='train', donate=args.donate,
                  profile_it=args.profile)
  matmul.append(matmul_gflops())
  if same_run:
    same_run.close()
  if args.conv_census:
    conv_ms = conv_census(model, params, x, t * 999)
    print(f'  = {conv_ms / step_ms:.0%} of the training step\'s median time')

  print()
  official_title = 'official, same run' if same_run else 'official (json)'
  print(f'{"":40s} {"median ms":>10s} {"min ms":>8s} {"CPU ms":>8s} {"compile s":>9s} {"GFLOP":>7s} '
        f'{"GFLOP/s":>8s} {official_title + " ms":>20s} {"ours/PT":>7s}')
  for label, med, best, cpu, compile_s, gflop, rate, off in rows:
    off_txt = f"{off:20.1f} {med / off:7.2f}" if off else ""
    print(f'{label:40s} {med:10.1f} {best:8.1f} {cpu:8.1f} {compile_s:9.1f} {gflop:7.1f} {rate:8.1f} {off_txt}')
  print(f'(CPU ms: process CPU time per call, both threads; on an idle 2-core machine it is about '
        f'2x the wall time. Load average now: {os.getloadavg()[0]:.2f})')
  best = max(matmul)
  ratio = STEP_GFLOP / step_ms * 1e3 / best
  print(f'2048^2 float32 jnp.dot: best {best:.1f} GFLOP/s (before/after the benchmark: '
        f'{matmul[0]:.1f}/{matmul[1]:.1f})')
  if 'train' in same_run_ms:
    ours, theirs = same_run_ms['train']
    official_ratio = STEP_GFLOP / statistics.median(theirs) * 1e3 / best
    print(f'train step rate / matmul rate: ours {ratio:.3f}, official PyTorch {official_ratio:.3f} (same run; '
          f'{OFFICIAL_RATIO} on the reference machine)')
    print(f'ours / official PyTorch, interleaved: train step {statistics.median(ours):.0f} / '
          f'{statistics.median(theirs):.0f} ms = {statistics.median(ours) / statistics.median(theirs):.2f} '
          f'(min {min(ours):.0f} / {min(theirs):.0f} ms = {min(ours) / min(theirs):.2f})')
    if 'forward' in same_run_ms:
      ours, theirs = same_run_ms['forward']
      print(f'ours / official PyTorch, interleaved: forward {statistics.median(ours):.0f} / '
            f'{statistics.median(theirs):.0f} ms = {statistics.median(ours) / statistics.median(theirs):.2f}')
  else:
    print(f'train step rate / matmul rate: {STEP_GFLOP} GFLOP / {step_ms / 1e3:.3f} s / {best:.1f} GFLOP/s '
          f'= {ratio:.3f}  (official PyTorch: {OFFICIAL_RATIO} on the reference machine; '
          f'{ratio / OFFICIAL_RATIO:.2f}x its speed)')


if __name__ == '__main__':
  main()
