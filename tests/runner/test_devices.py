"""Data parallelism: 8 (forced host) devices give the 1-device results, for training, sampling and bpd."""
import json

import jax
import numpy as np

from helpers import ENV, finish, run_cli

EIGHT = dict(ENV, XLA_FLAGS='--xla_force_host_platform_device_count=8')
ARGS = ['--config.training.n_iters=20', '--config.training.n_jitted_steps=10', '--config.training.log_freq=10',
        '--config.training.eval_freq=10', '--config.training.snapshot_freq=20',
        '--config.training.snapshot_freq_for_preemption=10', '--config.training.snapshot_sampling=False',
        '--config.training.batch_size=64', '--config.model.nf=32', '--config.model.num_scales=100',
        '--config.eval.num_samples=64', '--config.eval.batch_size=64', '--config.data.num_test=128']


def _run_all_modes(workdir, env):
  for mode in ('train', 'sample', 'likelihood'):
    code, _, err = finish(run_cli(workdir, f'--mode={mode}', *ARGS, env=env))
    assert code == 0, (mode, err[-3000:])


def test_eight_devices_match_one(tmp_path):
  one, eight = tmp_path / 'one', tmp_path / 'eight'
  _run_all_modes(one, ENV)
  _run_all_modes(eight, EIGHT)
  from score_sde.runner import checkpoints
  a, b = checkpoints.restore(str(one)), checkpoints.restore(str(eight))
  for x, y in zip(jax.tree.leaves((a.params, a.params_ema)), jax.tree.leaves((b.params, b.params_ema))):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
  samples = [np.load(d / 'samples' / 'samples_step_20.npz')['samples'] for d in (one, eight)]
  np.testing.assert_allclose(samples[0], samples[1], rtol=1e-4, atol=1e-4)
  bpd = [json.loads((d / 'likelihood.json').read_text()) for d in (one, eight)]
  assert abs(bpd[0]['bpd_mean'] - bpd[1]['bpd_mean']) < 1e-3, bpd
  losses = [[json.loads(l)['loss'] for l in (d / 'metrics.jsonl').read_text().splitlines() if '"loss"' in l]
            for d in (one, eight)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
