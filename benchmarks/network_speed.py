"""Speed of DDPM++ on CPU beside the official PyTorch code: a forward pass and a training step.

Setup of the official anchor (../shared/reference/timing_official_pytorch_cpu.json):
configs/vp/cifar10_ddpmpp_continuous.py with model.nf = 64, batch 16, 32x32x3; the
training step is the continuous VP loss (reduce_mean, dropout 0.1 active), its gradient,
warmup + global-norm clipping + Adam, and the EMA update, all in one jitted call.
Statistic: median over --iters timed calls after --warmup calls (compile time excluded).

  python benchmarks/network_speed.py [--nf 64] [--batch 16] [--ynn-fusion] [--two-pass-variance]

--ynn-fusion sets XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
(see ENV_NOTES.md); it must be decided before JAX starts, hence a flag.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL_JSON = REPO.parent / 'shared' / 'reference' / 'timing_official_pytorch_cpu.json'
OFFICIAL_FALLBACK = {'train_step_ms_median': 1906.7, 'forward_nograd_ms_median': 526.9}  # first run in that file


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--nf', type=int, default=64)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--ynn-fusion', action='store_true', help='XLA CPU flag from ENV_NOTES.md')
  parser.add_argument('--two-pass-variance', action='store_true',
                      help='GroupNorm with E[(x-mean)^2] instead of E[x^2]-E[x]^2 (the default, as flax)')
  return parser.parse_args()


def load_config(nf):
  sys.path.insert(0, str(REPO))
  path = REPO / 'configs' / 'vp' / 'cifar10_ddpmpp_continuous.py'
  spec = importlib.util.spec_from_file_location('ddpmpp_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.nf = nf
  return config


def median_ms(fn, args, iters, warmup):
  import jax  # pylint: disable=import-outside-toplevel
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times, cpu = [], []
  for _ in range(iters):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - start))
    cpu.append(1e3 * (time.process_time() - start_cpu))
  return statistics.median(times), min(times), statistics.median(cpu)


def main():
  args = parse_args()
  if args.ynn_fusion:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_experimental_ynn_fusion_type=-individual_convolution').strip()
  import jax  # pylint: disable=import-outside-toplevel
  from score_sde import losses, models, sde_lib  # pylint: disable=import-outside-toplevel
  from score_sde.models import layers  # pylint: disable=import-outside-toplevel

  if args.two_pass_variance:
    def group_norm(x, num_groups=None, name=None):
      return layers.group_norm(x, num_groups, name, two_pass=True)
    for module in ('layerspp', 'ddpm', 'ncsnpp'):
      setattr(sys.modules[f'score_sde.models.{module}'], 'group_norm', group_norm)

  config = load_config(args.nf)
  model = models.get_model(config)
  sde = sde_lib.get_sde(config)
  size = config.data.image_size
  rng = jax.random.PRNGKey(0)
  x = jax.random.uniform(rng, (args.batch, size, size, 3), minval=-1., maxval=1.)
  t = jax.random.uniform(jax.random.PRNGKey(1), (args.batch,), minval=1e-5, maxval=1.)
  params = jax.jit(lambda k: model.init(k, x, t * 999, train=False))(rng)['params']
  n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))

  rows = []

  def bench(label, fn, fn_args, official=None):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*fn_args).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get('flops', float('nan'))
    med, best, cpu = median_ms(compiled, fn_args, args.iters, args.warmup)
    rows.append((label, med, best, cpu, compile_s, flops / 1e9, flops / 1e6 / med, official))
    print(f'  {label}: {med:.1f} ms', flush=True)

  official = dict(OFFICIAL_FALLBACK)
  if OFFICIAL_JSON.exists():
    official.update(json.loads(OFFICIAL_JSON.read_text())['runs'][0])

  print(f'DDPM++ nf={args.nf}, batch {args.batch}, {size}x{size}x3, {n_params:,} parameters; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, GroupNorm variance: '
        f'{"two-pass" if args.two_pass_variance else "E[x^2]-E[x]^2"}', flush=True)

  bench('forward (eval, t*999)', lambda p, x, t: model.apply({'params': p}, x, t * 999, train=False),
        (params, x, t), official['forward_nograd_ms_median'])

  loss_fn = losses.get_sde_loss_fn(sde, model, train=True, reduce_mean=True, continuous=True)
  batch = {'image': x}
  bench('loss forward (train mode)', lambda p, b, r: loss_fn(r, p, b), (params, batch, rng))
  bench('loss value_and_grad', lambda p, b, r: jax.value_and_grad(loss_fn, argnums=1)(r, p, b),
        (params, batch, rng))

  optimizer = losses.get_optimizer(config)
  step_fn = losses.get_step_fn(sde, model, train=True, optimizer=optimizer, reduce_mean=True, continuous=True,
                               ema_rate=config.model.ema_rate)
  state = losses.init_train_state(rng, params, optimizer)
  bench('train step (grad + clip + Adam + EMA)', step_fn, (state, batch), official['train_step_ms_median'])

  print()
  print(f'{"":40s} {"median ms":>10s} {"min ms":>8s} {"CPU ms":>8s} {"compile s":>9s} {"GFLOP":>7s} '
        f'{"GFLOP/s":>8s} {"official PyTorch ms":>20s} {"ours/PT":>7s}')
  for label, med, best, cpu, compile_s, gflop, rate, off in rows:
    off_txt = f"{off:20.1f} {med / off:7.2f}" if off else ""
    print(f'{label:40s} {med:10.1f} {best:8.1f} {cpu:8.1f} {compile_s:9.1f} {gflop:7.1f} {rate:8.1f} {off_txt}')
  print(f'(CPU ms: process CPU time per call, both threads; on an idle 2-core machine it is about '
        f'2x the wall time. Load average now: {os.getloadavg()[0]:.2f})')


if __name__ == '__main__':
  main()
