"""Cost of one cross-process all-reduce of the quickstart's gradient (gloo on CPU), against the same mean
within one process. Spawns two local processes itself.

  python benchmarks/allreduce.py
"""
import os
import socket
import subprocess
import sys
import time

REPEATS = 30


def child(process_id, port, devices_per_process):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from score_sde import config_table, parallel
  from score_sde.runner import run_state
  if port:
    parallel.initialize(f'127.0.0.1:{port}', 2, process_id)
  config = config_table.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'quickstart.py'))
  params = jax.eval_shape(lambda: run_state.create_train_state(config, jax.random.PRNGKey(0))).params
  size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  by_device = NamedSharding(parallel.data_mesh(), P('data'))
  n = jax.device_count()
  # One gradient per device, stacked on a sharded leading axis; the mean over it is the all-reduce.
  local = np.ones((jax.local_device_count(), size), np.float32) * (process_id + 1)
  grads = jax.make_array_from_process_local_data(by_device, local, (n, size))
  mean = jax.jit(lambda g: jnp.mean(g, axis=0), out_shardings=parallel.replicated())
  mean(grads).block_until_ready()
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    mean(grads).block_until_ready()
    times.append(time.perf_counter() - start)
  if process_id == 0:
    print(f'{jax.process_count()} process(es) x {jax.local_device_count()} device(s) | {size:,} floats '
          f'({size * 4 / 2**20:.2f} MiB) | median {np.median(times) * 1e3:.2f} ms | min {np.min(times) * 1e3:.2f} ms')


def main():
  if any(arg in ('-h', '--help') for arg in sys.argv[1:]):
    print(__doc__.strip())
    return
  if len(sys.argv) > 1:
    child(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    return
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  print('layout | gradient | time of the mean over devices')
  subprocess.run([sys.executable, __file__, '0', '0', '1'], env=env, check=True)
  env2 = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  subprocess.run([sys.executable, __file__, '0', '0', '2'], env=env2, check=True)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), '1'], env=env,
                            stdout=None if i == 0 else subprocess.DEVNULL) for i in range(2)]
  for p in procs:
    p.wait()


if __name__ == '__main__':
  main()
