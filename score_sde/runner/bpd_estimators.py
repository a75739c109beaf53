"""The held-out likelihood figures of --mode likelihood and --mode eval, per batch and summarized.

Two estimators, picked by eval.bpd_method (BPD_METHODS):
- 'bpd': bits/dim under the probability-flow ODE (likelihood.get_likelihood_fn, eval.likelihood_rtol/atol), the
  figure sweeps read; with eval.dequantization_samples = K > 1, the importance-weighted dequantization estimate
  -log mean_k p(x + u_k) over K dequantizations (likelihood.importance_weighted_bpd).
- 'bound': the score_flow bound on -log p of the reverse-SDE model (likelihood.get_bound_fn, eval.bound_num_t draws
  of (t, z), t importance-sampled with eval.bound_importance_sampling).

Each estimator is `estimate(score_fn, images, dequantization_seed, key) -> round`, for images in [0, 1] (points
for toy data). A round is the dict a finished evaluation round keeps on disk: per-example values under the
estimator's name, 'nfe' (score evaluations per image) and 'seconds' (wall time, compilation excluded). Image data
are dequantized with default_rng(dequantization_seed) (always, as officially). With the defaults (the ODE, K = 1)
the ODE reads exactly the dequantization and the key it always did: draw k > 0 of K uses the seed
[*dequantization_seed, k] and the key fold_in(key, k). The bound uses the first draw's dequantization and `key`
itself (it splits the key; the ODE draws its probe from it directly), so the two are paired over the same
dequantized images.
"""
import time

import jax
import numpy as np

from score_sde import datasets, likelihood, parallel, sde_lib
from score_sde.metrics import formulas
from score_sde.registry import Registry

# eval.bpd_method -> the estimators it runs, in the order they run.
BPD_METHODS = Registry('eval.bpd_method')
BPD_METHODS.register('ode', ('bpd',))
BPD_METHODS.register('bound', ('bound',))
BPD_METHODS.register('both', ('bpd', 'bound'))
LABELS = {'bpd': 'probability-flow ODE', 'bound': 'score_flow bound'}


def describe(method):
  """What eval.bpd_method computes, in words."""
  return ' and '.join(LABELS[name] for name in BPD_METHODS.get(method))


def check_config(config):
  """The checks that tie the likelihood fields together, for --mode likelihood and eval: a ValueError with one
  sentence saying what to change."""
  ec = config.eval
  names = BPD_METHODS.get(ec.bpd_method)
  if ec.dequantization_samples > 1 and 'bound' in names:
    raise ValueError(f'eval.dequantization_samples={ec.dequantization_samples} applies to the ODE bpd only (a mean '
                     'of exponentiated bound estimates is no longer a bound); set eval.bpd_method=ode or '
                     'eval.dequantization_samples=1.')
  if ec.dequantization_samples > 1 and not datasets.spec(config).is_image:
    raise ValueError(f'eval.dequantization_samples={ec.dequantization_samples} needs image data to dequantize; '
                     f'data.dataset={config.data.dataset!r} is continuous, so set eval.dequantization_samples=1.')
  if 'bound' in names:  # an SDE without closed-form importance-sampled time says so here
    likelihood.get_bound_fn(sde_lib.get_sde(config), num_t=ec.bound_num_t,
                            importance_sampling=ec.bound_importance_sampling)


def dequantization(config, is_image):
  """What the figures assume of the data, in words (the tables' 'dequantization' column)."""
  if not is_image:
    return 'none (continuous data)'
  k = config.eval.dequantization_samples
  return 'uniform' if k == 1 else f'importance-weighted, K={k}'


class _Timer:
  """fn(*args) and its wall time, blocked until ready; each new kind of input is compiled first, untimed, and that
  compiled program is the one timed (a jitted call after an ahead-of-time compile would trace again)."""

  def __init__(self, fn):
    self.fn, self.compiled = fn, {}

  def __call__(self, *args):
    leaves, structure = jax.tree.flatten(args)
    signature = (structure, tuple((np.shape(leaf), getattr(leaf, 'dtype', type(leaf))) for leaf in leaves))
    if signature not in self.compiled:
      self.compiled[signature] = self.fn.lower(*args).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(self.compiled[signature](*args))
    return out, time.perf_counter() - start


def get_estimators(config, sde, dataset):
  """{name: estimate} for eval.bpd_method, in order ('bpd' before 'bound'); see the module docstring."""
  ec = config.eval
  inverse_scaler = datasets.get_data_inverse_scaler(config) if dataset.is_image else None
  scaler = datasets.get_data_scaler(config)

  def prepare(images, seed):
    if dataset.is_image:
      images = datasets.uniform_dequantize(images, np.random.default_rng(seed), dataset.num_levels)
    return scaler(images)

  def ode():
    timed = _Timer(likelihood.get_likelihood_fn(
        sde, inverse_scaler, num_levels=dataset.num_levels, sharding=parallel.batch_sharding(),
        rtol=ec.likelihood_rtol, atol=ec.likelihood_atol))
    num_draws = ec.dequantization_samples

    def estimate(score_fn, images, dequantization_seed, key):
      draws, nfe, seconds = [], 0, 0.
      for k in range(num_draws):
        seed, draw_key = (dequantization_seed, key) if k == 0 else ([*dequantization_seed, k],
                                                                    jax.random.fold_in(key, k))
        (bpd, _, draw_nfe), draw_seconds = timed(draw_key, score_fn, prepare(images, seed))
        draws.append(parallel.to_host(bpd))
        nfe, seconds = nfe + int(draw_nfe), seconds + draw_seconds
      if num_draws == 1:
        return {'bpd': draws[0], 'nfe': np.asarray(nfe), 'seconds': np.asarray(seconds)}
      draws = np.stack(draws)
      return {'bpd': likelihood.importance_weighted_bpd(draws, int(np.prod(dataset.shape))), 'bpd_draws': draws,
              'nfe': np.asarray(nfe), 'seconds': np.asarray(seconds)}
    return estimate

  def bound():
    timed = _Timer(likelihood.get_bound_fn(
        sde, inverse_scaler, num_levels=dataset.num_levels, num_t=ec.bound_num_t,
        importance_sampling=ec.bound_importance_sampling, sharding=parallel.batch_sharding()))

    def estimate(score_fn, images, dequantization_seed, key):
      (values, nfe), seconds = timed(key, score_fn, prepare(images, dequantization_seed))
      return {'bound': parallel.to_host(values), 'nfe': np.asarray(int(nfe)), 'seconds': np.asarray(seconds)}
    return estimate

  factories = {'bpd': ode, 'bound': bound}
  return {name: factories[name]() for name in BPD_METHODS.get(ec.bpd_method)}


def summarize(name, repeats):
  """Mean ± standard error of estimator `name` over the images, from its rounds: `repeats` holds, per fresh
  dequantization repeat, the rounds of every batch. An image's repeats are averaged first (they are not
  independent of each other). Also score evaluations and seconds per image (None when no round recorded them:
  rounds written before these were kept)."""
  per_example = np.mean([np.concatenate([r[name] for r in batches]) for batches in repeats], axis=0)
  done = [(len(r[name]), r) for batches in repeats for r in batches]

  def per_image(field, total):
    """`field` of a round is per image (nfe) or the round's total (seconds)."""
    kept = [(n, float(r[field]) * (1 if total else n)) for n, r in done if field in r]
    return sum(v for _, v in kept) / sum(n for n, _ in kept) if kept else None
  return {name: formulas.mean_stderr(per_example), f'{name}_nfe': per_image('nfe', total=False),
          f'{name}_seconds_per_image': per_image('seconds', total=True)}, per_example
