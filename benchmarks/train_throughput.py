"""Training steps/s and peak memory on this machine, for the quickstart and DDPM++ (32×32, nf=64, batch 16).

Each configuration runs in its own process so that its peak resident memory is its own.

  python benchmarks/train_throughput.py
"""
import argparse
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    'quickstart (DDPM++ nf=32, 8x8x1, batch 64)': ('configs/quickstart.py', {}),
    'DDPM++ (32x32x3, nf=64, batch 16)': ('configs/vp/cifar10_ddpmpp_continuous.py',
                                         {'model.nf': 64, 'training.batch_size': 16}),
}

CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, REPO)
import importlib.util, jax, jax.numpy as jnp
from score_sde import config_table, datasets, losses, models, sde_lib
from score_sde.runner import run_state
config = config_table.load(CONFIG)
for key, value in OVERRIDES.items():
  section, field = key.split('.'); config[section][field] = value
sde, model = sde_lib.get_sde(config), models.get_model(config)
optimizer = losses.get_optimizer(config)
step = jax.jit(losses.get_step_fn(sde, model, True, optimizer, config.training.reduce_mean,
                                  config.training.continuous, ema_rate=config.model.ema_rate))
state = run_state.create_train_state(config, jax.random.PRNGKey(0))
batch = {'image': jax.random.uniform(jax.random.PRNGKey(1),
                                     (config.training.batch_size,) + datasets.spec(config).shape) * 2 - 1}
start = time.perf_counter(); state, metrics = step(state, batch); jax.block_until_ready(metrics)
compile_s = time.perf_counter() - start
n = STEPS
start = time.perf_counter()
for _ in range(n):
  state, metrics = step(state, batch)
jax.block_until_ready(metrics)
per_step = (time.perf_counter() - start) / n
print(json.dumps({'steps_per_s': 1 / per_step, 's_per_step': per_step, 'compile_s': compile_s,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'params': sum(x.size for x in jax.tree.leaves(state.params))}))
'''


def main():
  rows = []
  for name, (config, overrides) in CASES.items():
    code = (CHILD.replace('REPO', repr(str(REPO))).replace('CONFIG', repr(str(REPO / config)))
            .replace('OVERRIDES', repr(overrides)).replace('STEPS', '20' if 'quickstart' in name else '5'))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
      raise SystemExit(out.stderr[-3000:])
    rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
  print('| model | params | steps/s | s/step | compile s | peak RSS MB |')
  print('|---|---|---|---|---|---|')
  for name, r in rows:
    print(f"| {name} | {r['params']:,} | {r['steps_per_s']:.2f} | {r['s_per_step']:.3f} | {r['compile_s']:.1f} | "
          f"{r['peak_rss_mb']:.0f} |")


if __name__ == '__main__':
  argparse.ArgumentParser(description=__doc__).parse_args()  # --help; the benchmark takes no options
  main()
