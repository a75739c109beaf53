"""--mode likelihood and --mode eval with eval.bpd_method: the ODE bpd keeps its keys and its value, the bound comes
under its own; the cross-entropy of held-out mixture points bounds both from below; bad settings exit 2, one line."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde import likelihood, toy
from score_sde.runner import run_state
from helpers import REPO, TOY, finish, run_cli

NUM_T = 8
EVAL = ['--mode=eval', '--config.eval.enable_sampling=False', '--config.eval.enable_loss=False',
        '--config.eval.begin_ckpt=1', '--config.eval.end_ckpt=1']


def _config():
  from score_sde import config_table
  config = config_table.load(TOY)
  config.model.nf, config.model.num_layers = 16, 2
  config.data.num_test, config.eval.batch_size = 256, 128  # two batches
  config.training.snapshot_freq = 10
  return config


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """A run whose step-10 permanent checkpoint holds random weights (no training compile). The network's zero-
  initialised output layer is made random too: a zero score would make every Hutchinson probe give the exact
  divergence, and the tests could not tell one probe from another."""
  from score_sde.runner import checkpoints
  workdir = tmp_path_factory.mktemp('likelihood_run')
  config = _config()
  state = run_state.create_train_state(config, jax.random.PRNGKey(config.seed)).replace(step=jnp.asarray(10))
  leaves, tree = jax.tree.flatten(state.params_ema)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  state = state.replace(params_ema=jax.tree.unflatten(
      tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]))
  run = checkpoints.RunCheckpoints(str(workdir))
  run.save(state, permanent=True)
  run.close()
  checkpoints.save_config(str(workdir), config)
  return workdir


def _run(workdir, *flags, **kwargs):
  """run.py on the run under the config it was saved with."""
  return run_cli(workdir, *flags, config=f'{REPO / "experiments" / "workdir_config.py"}:{workdir}', **kwargs)


def _likelihood(workdir, *flags):
  code, _, err = finish(_run(workdir, '--mode=likelihood', *flags))
  assert code == 0, err[-3000:]
  return json.loads((workdir / 'likelihood.json').read_text())


def _exact_bpd(config):
  """-log2 p(x) / D of the held-out points under the mixture's own density."""
  from score_sde import datasets
  points = np.concatenate([b['image'] for b in datasets.get_dataset(config).eval_batches()])
  return -np.asarray(toy.get_toy_distribution('gmm').log_prob(points), np.float64) / (points.shape[1] * np.log(2))


def _ode_bpd_as_always(workdir):
  """The ODE bpd of the held-out batches with the key fold_in(PRNGKey(seed + 2), batch), the official tolerances
  of the config, and no dequantization (toy points): what --mode likelihood computed before the bound existed."""
  from score_sde import datasets, models, parallel, sde_lib
  from score_sde.runner import checkpoints
  config = checkpoints.load_config(str(workdir))
  state = checkpoints.restore(str(workdir), run_state.abstract_train_state(config))
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  score_fn = models.get_score_fn(sde, model, {'params': state.params_ema}, continuous=True)
  likelihood_fn = likelihood.get_likelihood_fn(sde, rtol=config.eval.likelihood_rtol, atol=config.eval.likelihood_atol,
                                               sharding=parallel.batch_sharding())
  key = jax.random.PRNGKey(config.seed + 2)
  return np.concatenate([np.asarray(likelihood_fn(jax.random.fold_in(key, i), score_fn, b['image'])[0])
                         for i, b in enumerate(datasets.get_dataset(config).eval_batches())])


def test_both_keeps_the_ode_bpd_and_adds_the_bound(toy_run):
  ode = _likelihood(toy_run)
  both = _likelihood(toy_run, '--config.eval.bpd_method=both', f'--config.eval.bound_num_t={NUM_T}')
  assert both['bpd_mean'] == ode['bpd_mean'] and both['bpd_stderr'] == ode['bpd_stderr']  # bit for bit
  assert ode['bpd_mean'] == _ode_bpd_as_always(toy_run).astype(np.float64).mean()  # the keys and batches --mode likelihood always used
  assert 'bound_mean' not in ode and ode['bpd_method'] == 'ode'
  assert both['bound_nfe'] == NUM_T + 1 and both['bpd_nfe'] == ode['bpd_nfe'] > 0
  assert both['bound_seconds_per_image'] > 0 and both['bpd_seconds_per_image'] > 0
  assert both['num_examples'] == 256 and both['dequantization'] == 'none (continuous data)'
  # Any model's mean -log p of data from the mixture is at least the mixture's entropy (cross-entropy >= entropy),
  # estimated by the same points' exact density; the bound is above the reverse-SDE model's -log p.
  exact = _exact_bpd(_config())
  floor = exact.mean() - 3 * exact.std(ddof=1) / np.sqrt(len(exact))
  for name in ('bpd', 'bound'):
    assert both[f'{name}_mean'] > floor, (name, both, exact.mean())


def test_eval_adds_the_bound_to_kept_ode_rounds_and_refuses_other_bound_settings(toy_run):
  flags = [*EVAL, '--eval_folder=eval_both', f'--config.eval.bound_num_t={NUM_T}']
  code, _, err = finish(_run(toy_run, *flags))
  assert code == 0, err[-3000:]
  results = toy_run / 'eval_both' / 'eval_results.json'
  ode = json.loads(results.read_text())['checkpoints']['10']
  code, _, err = finish(_run(toy_run, *flags, '--config.eval.bpd_method=both'))
  assert code == 0, err[-3000:]
  both = json.loads(results.read_text())['checkpoints']['10']
  assert 'bound' not in ode and both['bpd'] == ode['bpd'] and both['bpd_nfe'] == ode['bpd_nfe']
  assert both['bpd_rounds_run_now'] == 0 and both['bound_rounds_run_now'] == 2  # the ODE rounds were kept
  assert both['bound_nfe'] == NUM_T + 1 and np.isfinite(both['bound']['mean']) and both['bound']['stderr'] > 0
  assert sorted(p.name for p in (toy_run / 'eval_both' / 'ckpt_10').glob('*.npz')) == [
      'bound_0_0.npz', 'bound_0_1.npz', 'bpd_0_0.npz', 'bpd_0_1.npz']
  code, _, err = finish(_run(toy_run, *flags, '--config.eval.bpd_method=both', '--config.eval.bound_num_t=16'))
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'other settings (bound_num_t)' in err, err


@pytest.mark.parametrize('overrides, message', [
    ({'bpd_method': 'elbo'}, "eval.bpd_method='elbo' is unknown; known: ['both', 'bound', 'ode']"),
    ({'bound_num_t': 0}, 'eval.bound_num_t=0 must be a positive integer'),
    ({'bpd_method': 'bound', 'dequantization_samples': 4}, 'applies to the ODE bpd only'),
    ({'bpd_method': 'both', 'dequantization_samples': 4}, 'applies to the ODE bpd only'),
    ({'dequantization_samples': 4}, 'needs image data to dequantize'),
])
def test_bad_likelihood_settings_are_one_sentence(overrides, message):
  from score_sde.runner import validate
  config = _config()
  config.eval.update(overrides)
  for mode in ('likelihood', 'eval'):
    with pytest.raises(validate.ConfigError, match=message.replace('[', r'\[').replace(']', r'\]')) as error:
      validate.validate(config, mode)
    assert '\n' not in str(error.value)


def test_a_bad_combination_exits_2_with_one_line_before_any_work(toy_run, tmp_path):
  code, _, err = finish(_run(toy_run, '--mode=likelihood', '--config.eval.bpd_method=bound',
                                '--config.eval.dequantization_samples=2'), timeout=120)
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'eval.dequantization_samples=2' in err, err


def test_importance_weighted_dequantization_tends_to_the_cell_probability():
  """-log2 mean_k p(y_k) over uniform draws y_k in the cell of x tends to -log2(L P(x)) (cell of width 1/L),
  with P(x) from the normal CDF; K = 1 averages to E[-log2 p(y)], which is larger (Jensen)."""
  levels, x, mu, sd = 17, 5, 0.3, 0.02  # a density that varies strongly over the cell
  rng = np.random.default_rng(0)
  y = (x + rng.random((4096, 64))) / levels  # 4096 draws for each of 64 estimates
  draws = -stats.norm(mu, sd).logpdf(y) / np.log(2)  # bpd of each draw, D = 1
  exact = -np.log2(levels * (stats.norm(mu, sd).cdf((x + 1) / levels) - stats.norm(mu, sd).cdf(x / levels)))
  estimates = likelihood.importance_weighted_bpd(draws, dim=1)
  assert estimates.shape == (64,) and abs(estimates.mean() - exact) < 0.02, (estimates.mean(), exact)
  assert draws.mean() > exact + 0.5
  np.testing.assert_allclose(likelihood.importance_weighted_bpd(draws[:1], dim=1), draws[0])  # K = 1
  big = np.full((3, 2), 2.5)  # D = 3072: 2^(-D bpd) underflows unless the mean is taken in log space
  np.testing.assert_allclose(likelihood.importance_weighted_bpd(big, dim=3072), [2.5, 2.5])


def test_check_finds_the_checkpoint_of_a_relative_workdir(toy_run):
  code, out, err = finish(_run(toy_run.name, '--mode=likelihood', '--config.eval.bpd_method=both', '--check',
                               cwd=toy_run.parent), timeout=120)
  assert code == 0 and 'probability-flow ODE and score_flow bound), from step 10' in out, err[-2000:]
