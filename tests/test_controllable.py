"""Controllable generation: parity with the official code (controllable_steps) and exact mixture checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_rel_close, load_reference
from score_sde import controllable, sampling, sde_lib

SDES = {
    'vesde': lambda N: sde_lib.VESDE(sigma_min=0.01, sigma_max=50., N=N),
    'vpsde': lambda N: sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=N),
    'subvpsde': lambda N: sde_lib.subVPSDE(beta_min=0.1, beta_max=20., N=N),
}
TOL = 1e-5  # the fixtures' float32 tolerance, relative to max|x|
PARITY_ERRORS = {}  # case family -> largest relative error seen (printed by the last parity test)


@pytest.fixture(scope='module')
def ref():
  return load_reference('controllable_steps')


def gaussian_score(name):
  """The fixtures' analytic score: data N(0.5, 0.2²) per pixel, pushed through the SDE."""
  def score_fn(x, t):
    if name == 'vesde':
      m, s2 = 0.5, 0.04 + (0.01 * 5000. ** t) ** 2
    else:
      a = jnp.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1)
      m, s2 = 0.5 * a, 0.04 * a ** 2 + ((1 - a ** 2) if name == 'vpsde' else (1 - a ** 2) ** 2)
    m, s2 = jnp.broadcast_to(m, t.shape), jnp.broadcast_to(s2, t.shape)
    return -(x - m[:, None, None, None]) / s2[:, None, None, None]
  return score_fn


def nhwc(a):
  return np.moveaxis(np.asarray(a), -3, -1)


@pytest.fixture
def stored_noise(monkeypatch):
  """Makes sampling.standard_normal return the given draws in order; records how many were taken."""
  state = {'noise': None, 'count': 0}

  def standard_normal(rng, shape):
    k = state['count']
    state['count'] += 1
    return jnp.asarray(state['noise'][k]).reshape(shape)

  monkeypatch.setattr(sampling, 'standard_normal', standard_normal)
  return state


def _record(family, err):
  PARITY_ERRORS[family] = max(PARITY_ERRORS.get(family, 0.), err)


def _check(family, actual, expected, what, scale=None):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = np.abs(expected).max() if scale is None else scale
  _record(family, np.abs(actual - expected).max() / scale)
  assert_rel_close(actual, expected, TOL, what, scale)


# ---------------------------------------------------------------- one wrapped step

ONE_STEP = [(task, name, kind, step) for task in ('inpaint', 'color') for name in SDES
            for kind, step in (('pred', 'reverse_diffusion'), ('pred', 'euler_maruyama'), ('pred', 'none'),
                               ('corr', 'langevin'), ('corr', 'none'))]


def _update_fn(sde, name, kind, step):
  score_fn = gaussian_score(name)
  if kind == 'pred':
    fn, _ = sampling.get_predictor(step)
    return lambda rng, x, t: fn(sde, score_fn, rng, x, t, False)
  fn, _ = sampling.get_corrector(step)
  return lambda rng, x, t: fn(sde, score_fn, rng, x, t, 0.16, 1)


@pytest.mark.parametrize('task,name,kind,step', ONE_STEP)
def test_one_step_matches_official(ref, stored_noise, task, name, kind, step):
  key = f'{task}/{name}/{kind}_{step}'
  if f'{key}/x' not in ref:
    pytest.skip(f'{key}: the official code cannot run it (subVPSDE has no alphas)')
  sde = SDES[name](1000)
  update = _update_fn(sde, name, kind, step)
  x = jnp.asarray(ref['inputs/x_nhwc'])
  first = 1 if step == 'none' else 0  # the known-part draw is step_noise[1] even when the step draws nothing
  for i, t in enumerate(ref['inputs/t_values']):
    stored_noise.update(noise=ref['inputs/step_noise_nhwc'], count=first)
    vec_t = jnp.full((x.shape[0],), t, jnp.float32)
    if task == 'inpaint':
      args = (jnp.asarray(ref['inpaint/data_nhwc']), jnp.asarray(ref['inpaint/mask_nhwc']))
    else:
      args = (controllable.decouple(jnp.asarray(ref['color/gray_img_nhwc'])), controllable.gray_mask(x),
              controllable.decouple, controllable.couple)
    new_x, x_mean = controllable.known_part_update(update, sde, jax.random.PRNGKey(0), x, vec_t, *args)
    family = f'one step {task}'
    _check(family, new_x, ref[f'{key}/x_nhwc'][i], f'{key} t={t} x')
    _check(family, x_mean, ref[f'{key}/x_mean_nhwc'][i], f'{key} t={t} x_mean')
    assert stored_noise['count'] - first == ref[f'{key}/noise_calls'][i], 'number of Gaussian draws'


def test_color_matrix_is_the_official_one(ref):
  np.testing.assert_allclose(controllable.COLOR_M, ref['color/M'], atol=1e-7)
  np.testing.assert_allclose(controllable.COLOR_INV_M, ref['color/invM'], atol=3e-7)
  gray = jnp.asarray(ref['color/gray_img_nhwc'])
  np.testing.assert_allclose(controllable.decouple(gray), ref['color/gray_decoupled_nhwc'], atol=1e-6)
  np.testing.assert_array_equal(controllable.gray_mask(gray), ref['color/mask_nhwc'])


# ---------------------------------------------------------------- whole runs

RUNS = [(task, name, folder, combo) for task in ('inpaint', 'color')
        for name, folder, combo in (
            ('vesde', 'run', 'reverse_diffusion+langevin'), ('vesde', 'run', 'euler_maruyama+none'),
            ('vesde', 'run', 'none+langevin'), ('vpsde', 'run', 'euler_maruyama+none'),
            ('vpsde', 'run_N25', 'reverse_diffusion+langevin'), ('vpsde', 'run_N25', 'none+langevin'),
            ('subvpsde', 'run', 'euler_maruyama+none'))]


@pytest.mark.parametrize('task,name,folder,combo', RUNS)
def test_whole_run_matches_official(ref, stored_noise, task, name, folder, combo):
  """The official pc_inpainter / pc_colorizer from the same draws (run step by step, outside jit)."""
  key = f'{task}/{name}/{folder}/{combo}'
  noise = nhwc(ref[f'{key}/noise'])
  sde = SDES[name](len(ref[f'{key}/t']))
  predictor, corrector = combo.split('+')
  make = controllable.get_pc_inpainter if task == 'inpaint' else controllable.get_pc_colorizer
  sampler = make(sde, noise.shape[1:], predictor, corrector, snr=0.16, n_steps=1, eps=1e-5)
  z = noise[0] * (50. if name == 'vesde' else 1.)  # draw 0 is the prior's
  stored_noise.update(noise=noise[1:], count=0)
  with jax.disable_jit():
    if task == 'inpaint':
      x, nfe = sampler(jax.random.PRNGKey(0), gaussian_score(name), ref['inpaint/data_nhwc'],
                       ref['inpaint/mask_nhwc'], z=z)
    else:
      x, nfe = sampler(jax.random.PRNGKey(0), gaussian_score(name), ref['color/gray_img_nhwc'], z=z)
  assert stored_noise['count'] == len(noise) - 1, 'number of Gaussian draws'
  assert int(nfe) == sde.N * ((predictor != 'none') + (corrector != 'none'))
  scale = np.abs(ref[f'{key}/traj_x']).max()  # VE passes through |x| ~ 200
  _check(f'whole run {task} {name}', x, ref[f'{key}/output_nhwc'], key, scale)


def test_report_parity_errors():
  print('\nlargest relative errors (|ours - official| / max|x|):')
  for family, err in sorted(PARITY_ERRORS.items()):
    print(f'  {family:32s} {err:.2e}')
