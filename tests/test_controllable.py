"""Controllable generation: parity with the official code (controllable_steps) and exact mixture checks."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (PAPER_SDES as SDES, REPO, StoredNoise, assert_rel_close, component_failures, exact_classifier,
                     load_reference)
from score_sde import controllable, sampling, sde_lib, toy

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
def stored_noise():
  """The samplers' `randn_like`, returning the official draws in order."""
  return StoredNoise()


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


def _update_fn(sde, name, kind, step, randn_like):
  score_fn = gaussian_score(name)
  if kind == 'pred':
    fn = sampling.PREDICTORS.get(step)
    return lambda rng, x, t: fn(sde, score_fn, rng, x, t, False, randn_like)
  fn = sampling.CORRECTORS.get(step)
  return lambda rng, x, t: fn(sde, score_fn, rng, x, t, 0.16, 1, randn_like)


@pytest.mark.parametrize('task,name,kind,step', ONE_STEP)
def test_one_step_matches_official(ref, stored_noise, task, name, kind, step):
  key = f'{task}/{name}/{kind}_{step}'
  if f'{key}/x' not in ref:
    pytest.skip(f'{key}: the official code cannot run it (subVPSDE has no alphas)')
  sde = SDES[name](1000)
  update = _update_fn(sde, name, kind, step, stored_noise)
  x = jnp.asarray(ref['inputs/x_nhwc'])
  first = 1 if step == 'none' else 0  # the known-part draw is step_noise[1] even when the step draws nothing
  for i, t in enumerate(ref['inputs/t_values']):
    stored_noise.draws, stored_noise.count = ref['inputs/step_noise_nhwc'], first
    vec_t = jnp.full((x.shape[0],), t, jnp.float32)
    if task == 'inpaint':
      args = (jnp.asarray(ref['inpaint/data_nhwc']), jnp.asarray(ref['inpaint/mask_nhwc']))
    else:
      args = (controllable.decouple(jnp.asarray(ref['color/gray_img_nhwc'])), controllable.gray_mask(x),
              controllable.decouple, controllable.couple)
    new_x, x_mean = controllable.known_part_update(update, sde, jax.random.PRNGKey(0), x, vec_t, *args,
                                                   randn_like=stored_noise)
    family = f'one step {task}'
    _check(family, new_x, ref[f'{key}/x_nhwc'][i], f'{key} t={t} x')
    _check(family, x_mean, ref[f'{key}/x_mean_nhwc'][i], f'{key} t={t} x_mean')
    assert stored_noise.count - first == ref[f'{key}/noise_calls'][i], 'number of Gaussian draws'


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
  sampler = make(sde, noise.shape[1:], predictor, corrector, snr=0.16, n_steps=1, eps=1e-5, randn_like=stored_noise)
  z = noise[0] * (50. if name == 'vesde' else 1.)  # draw 0 is the prior's
  stored_noise.draws = noise[1:]
  with jax.disable_jit():
    if task == 'inpaint':
      x, nfe = sampler(jax.random.PRNGKey(0), gaussian_score(name), ref['inpaint/data_nhwc'],
                       ref['inpaint/mask_nhwc'], z=z)
    else:
      x, nfe = sampler(jax.random.PRNGKey(0), gaussian_score(name), ref['color/gray_img_nhwc'], z=z)
  assert stored_noise.count == len(noise) - 1, 'number of Gaussian draws'
  assert int(nfe) == sde.N * ((predictor != 'none') + (corrector != 'none'))
  scale = np.abs(ref[f'{key}/traj_x']).max()  # VE passes through |x| ~ 200
  _check(f'whole run {task} {name}', x, ref[f'{key}/output_nhwc'], key, scale)


def test_report_parity_errors():
  print('\nlargest relative errors (|ours - official| / max|x|):')
  for family, err in sorted(PARITY_ERRORS.items()):
    print(f'  {family:32s} {err:.2e}')


# ---------------------------------------------------------------- exact checks on Gaussian mixtures
# Isotropic components N(μ_k, s_k² I) stay Gaussian under the SDE: N(a μ_k, (a² s_k² + σ²) I) at time t.

MIXTURE = toy.get_toy_distribution('gmm')  # three well-separated 2-D components
N_PER_CLASS = 1500


@pytest.fixture(scope='module')
def class_labels():
  return jnp.arange(3 * N_PER_CLASS) % 3


@pytest.fixture(scope='module')
def guided_pc():
  """One compiled PC sampler (VP, reverse diffusion + Langevin): labels and scale are pytree leaves."""
  sde = SDES['vpsde'](1000)
  sampler = sampling.get_pc_sampler(sde, (3 * N_PER_CLASS, 2), 'reverse_diffusion', 'langevin', snr=0.16)
  return sde, sampler


def test_guidance_with_the_exact_classifier_samples_one_component_pc(guided_pc, class_labels):
  sde, sampler = guided_pc
  guided = controllable.classifier_guided_score(MIXTURE.marginal_score(sde), exact_classifier(MIXTURE, sde),
                                                class_labels, scale=1.)
  x, nfe = sampler(jax.random.PRNGKey(3), guided)
  assert int(nfe) == 2000
  failures, figures = component_failures(x, class_labels, MIXTURE.means, MIXTURE.stds)
  print('\nPC, VP, guided (class: mean error in stds, std ratios, KS):', figures)
  assert not failures, failures


def test_guidance_test_fails_without_guidance(guided_pc, class_labels):
  """scale=0 is the unconditional sampler: the per-class checks must reject it (same compiled sampler)."""
  sde, sampler = guided_pc
  unguided = controllable.classifier_guided_score(MIXTURE.marginal_score(sde), exact_classifier(MIXTURE, sde),
                                                  class_labels, scale=0.)
  x, _ = sampler(jax.random.PRNGKey(3), unguided)
  failures, _ = component_failures(x, class_labels, MIXTURE.means, MIXTURE.stds)
  assert len(failures) >= 3, failures


def test_guidance_with_the_exact_classifier_samples_one_component_ode(class_labels):
  sde = SDES['subvpsde'](1000)
  sampler = sampling.get_ode_sampler(sde, (3 * N_PER_CLASS, 2), rtol=1e-5, atol=1e-5, eps=1e-3)
  guided = controllable.classifier_guided_score(MIXTURE.marginal_score(sde), exact_classifier(MIXTURE, sde),
                                                class_labels)
  x, nfe = sampler(jax.random.PRNGKey(4), guided)
  failures, figures = component_failures(x, class_labels, MIXTURE.means, MIXTURE.stds)
  print(f'\nODE, subVP, guided, nfe {int(nfe)}:', figures)
  assert not failures, failures


# Inpainting x2 given x1, for a mixture well separated in x1: x2 | x1 ~ N(μ_k2, s_k²) of x1's component.
SEPARATED = toy.GaussianMixture(weights=(0.3, 0.3, 0.4), means=((-4., 2.), (0., -1.), (4., 0.5)),
                                stds=(0.5, 0.3, 0.7))
INPAINT_N = 4000


@pytest.fixture(scope='module')
def inpaint_problem():
  """Known x1 drawn from each component (posterior weight of the others < 1e-6), x2 unknown."""
  rng = np.random.default_rng(0)
  k = np.arange(3 * INPAINT_N) % 3
  x1 = np.asarray(SEPARATED.means)[k, 0] + np.asarray(SEPARATED.stds)[k] * np.clip(rng.normal(size=k.shape), -2, 2)
  data = np.stack([x1, np.zeros_like(x1)], axis=1).astype(np.float32)
  mask = np.broadcast_to(np.array([1., 0.], np.float32), data.shape)
  return data, mask, k


def conditional_failures(x2, k, mean_tol, std_tol):
  """The inpainted x2 per component against the exact conditional N(μ_k2, s_k²)."""
  return component_failures(x2, k, np.asarray(SEPARATED.means)[:, 1], SEPARATED.stds, mean_tol, std_tol)


def _inpaint(problem, predictor, corrector):
  data, mask, k = problem
  sde = SDES['vpsde'](1000)
  inpainter = controllable.get_pc_inpainter(sde, data.shape, predictor, corrector, eps=1e-3)
  x, _ = inpainter(jax.random.PRNGKey(5), SEPARATED.marginal_score(sde), data, mask)
  kept = sde.marginal_prob(jnp.asarray(data), jnp.full((len(data),), 1e-3))[0][:, 0]
  np.testing.assert_allclose(x[:, 0], kept, atol=1e-5)  # the known coordinate: its noise-free mean at eps
  return x[:, 1], k


def test_inpainting_draws_the_conditional(inpaint_problem):
  """The official rule with reverse diffusion + Langevin: within 0.06 sd of the conditional mean and 6 % of its std."""
  failures, figures = conditional_failures(*_inpaint(inpaint_problem, 'reverse_diffusion', 'langevin'), 0.06, 0.06)
  print('\ninpainting reverse_diffusion+langevin (class: mean error in stds, std ratio, KS):', figures)
  assert not failures, failures


def test_inpainting_check_rejects_euler_maruyama_alone(inpaint_problem):
  """Without a corrector the replacement rule lags behind (about 0.3 sd): the same check must fail."""
  failures, figures = conditional_failures(*_inpaint(inpaint_problem, 'euler_maruyama', 'none'), 0.06, 0.06)
  print('\ninpainting euler_maruyama+none:', figures)
  assert failures


# ---------------------------------------------------------------- conditioning (run.py --mode sample)

def quickstart_config(**sampling_fields):
  from score_sde import config_table
  config = config_table.load(str(REPO / 'configs' / 'quickstart.py'))
  config.model.num_scales = 20  # a short chain: these tests check the wiring, not the samples
  config.eval.batch_size = 16
  for key, value in sampling_fields.items():
    config.sampling[key] = value
  return config


@pytest.mark.parametrize('fields,message', [
    (dict(condition='colorize'), 'Colorization needs RGB data'),
    (dict(condition='class'), 'needs a classifier'),
    (dict(condition='class', classifier='noisy_digits', labels='3,12'), 'outside the classifier'),
    (dict(condition='class', classifier='noisy_digits', labels='three'), 'class ids'),
    (dict(condition='inpaint', classifier='noisy_digits'), "guidance needs sampling.condition='class'"),
    (dict(condition='inpaint', mask='box', mask_fraction=0.001), 'no pixel unknown'),
    (dict(condition='class', classifier='/nonexistent/wrn_checkpoint'), 'no such file'),
])
def test_check_refuses_bad_input_in_one_line(fields, message):
  from score_sde.runner import conditional_sampling
  with pytest.raises(ValueError, match=message) as error:
    conditional_sampling.check(quickstart_config(**fields))
  assert '\n' not in str(error.value)


def test_check_refuses_a_mask_file_of_the_wrong_shape(tmp_path):
  from score_sde.runner import conditional_sampling
  np.save(tmp_path / 'mask.npy', np.ones((5, 5)))
  with pytest.raises(ValueError, match=r'has shape \(5, 5\)'):
    conditional_sampling.check(quickstart_config(condition='inpaint', mask=str(tmp_path / 'mask.npy')))
  mask = np.ones((8, 8))
  mask[2:6, 2:6] = 0
  np.save(tmp_path / 'mask.npy', mask)
  conditional_sampling.check(quickstart_config(condition='inpaint', mask=str(tmp_path / 'mask.npy')))


def test_masks():
  from score_sde.runner import conditional_sampling
  shape = (3, 8, 8, 1)
  half = conditional_sampling.make_mask('half', 0.5, shape)
  assert half[:, :, :4].min() == 1 and half[:, :, 4:].max() == 0
  box = conditional_sampling.make_mask('box', 0.25, shape)
  assert box.sum() == 3 * (64 - 16) and box[:, 2:6, 2:6].max() == 0
  random = conditional_sampling.make_mask('random', 0.5, (64, 8, 8, 3))
  assert abs(random.mean() - 0.5) < 0.02 and np.all(random == random[..., :1])


@pytest.mark.parametrize('condition', ['inpaint', 'class'])
def test_run_writes_grid_npz_and_metrics(tmp_path, monkeypatch, condition):
  """run() end to end with the score of N(0, I) data (exact for VP) in place of a trained network."""
  from PIL import Image

  from score_sde import models
  from score_sde.runner import conditional_sampling
  monkeypatch.setattr(models, 'get_score_fn', lambda *args, **kwargs: (lambda x, t: -x))
  monkeypatch.setattr(models, 'get_model', lambda config: None)
  fields = dict(condition=condition, num_inputs=3, num_completions=2)
  if condition == 'class':
    fields.update(classifier='noisy_digits', labels='1,7', guidance_scale=2.)
  config = quickstart_config(**fields)
  conditional_sampling.check(config)
  state = type('State', (), {'step': 7, 'params_ema': {}})()
  metrics = conditional_sampling.run(config, str(tmp_path), state)
  stem = tmp_path / 'samples' / f'{condition}_step_7'
  picture = np.asarray(Image.open(f'{stem}.png'))
  arrays = np.load(f'{stem}.npz')
  if condition == 'inpaint':
    assert arrays['completions'].shape == (3, 2, 8, 8, 1)
    # the known half is the original (up to the noise-free mean at eps): the sampler kept it
    known = arrays['mask'][:, None] == 1
    err = np.abs(arrays['completions'] - arrays['originals'][:, None])[np.broadcast_to(known, (3, 2, 8, 8, 1))]
    assert err.max() < 2e-3
    sq = (arrays['completions'] - arrays['originals'][:, None]) ** 2
    unknown = np.broadcast_to(~known, sq.shape)
    assert metrics['mse_filled_region'] == pytest.approx(sq[unknown].mean(), rel=1e-5)
    assert 0 < metrics['mse_random_training_image'] < 1
    assert picture.shape[0] * (5 * 9 + 1) == picture.shape[1] * (3 * 9 + 1)  # 3 rows of original, mask, input, 2
  else:
    assert arrays['samples'].shape == (4, 8, 8, 1) and list(arrays['labels']) == [1, 1, 7, 7]
    assert set(metrics['accuracy_per_class']) == {'1', '7'}
  assert json.loads((tmp_path / 'samples' / f'{condition}_step_7.json').read_text())['step'] == 7


def test_colorize_task_keeps_the_gray_level(monkeypatch):
  """conditional_sampling.colorize on RGB images (held-out data replaced): completions have the input's gray level."""
  from score_sde.runner import conditional_sampling
  images = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 8, 8, 3)).astype(np.float32)
  monkeypatch.setattr(conditional_sampling, 'held_out_images', lambda config, n: images[:n])
  config = quickstart_config(condition='colorize', num_inputs=2, num_completions=2, corrector='langevin')
  config.data.num_channels = 3
  conditional_sampling.check(config)
  sde = sde_lib.get_sde(config)
  def score_fn(x, t):  # data N(0, 0.1² I) in [-1, 1]: colours stay inside the picture, so no clipping
    a, s = sde.marginal_prob(jnp.ones_like(t), t)
    return -x / (0.01 * a ** 2 + s ** 2)[:, None, None, None]
  rows, arrays, metrics = conditional_sampling.colorize(config, sde, score_fn, jax.random.PRNGKey(0),
                                                           after_round=lambda r, n: None)
  gray = arrays['completions'].mean(-1)
  np.testing.assert_allclose(gray, np.broadcast_to(images.mean(-1)[:, None], gray.shape), atol=2e-3)
  assert arrays['completions'].std(-1).mean() > 0.01  # colour was sampled, not copied from the gray input
  assert len(rows) == 2 and len(rows[0]) == 5 and metrics['nfe'] == 2 * 20
