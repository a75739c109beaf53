"""A class-conditional model trained through run.py (the toy mixture, label dropout), sampled with classifier-free
guidance (--mode sample, sampling.condition=cfg), evaluated (--mode eval) and scored (--mode likelihood); and the
bad inputs of guidance, each one line before anything runs."""
import json
import shutil
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import MIXTURE, REPO, TOY, Watched, component_log_probs, finish, run_cli
from score_sde import config_table, sde_lib
from score_sde.runner import validate

STEPS = 600
FIELDS = {'model.num_classes': -1, 'training.label_dropout': 0.1, 'model.nf': 32, 'model.ema_rate': 0.99,
          'training.batch_size': 256, 'training.n_iters': STEPS, 'training.snapshot_freq': STEPS,
          'training.snapshot_freq_for_preemption': STEPS, 'training.log_freq': 200, 'training.eval_freq': STEPS,
          'training.snapshot_sampling': False, 'data.num_test': 600, 'eval.batch_size': 300,
          'sampling.method': 'dpm_solver++', 'sampling.num_steps': 20}
CONDITIONAL = [f'--config.{k}={v}' for k, v in FIELDS.items()]


@pytest.fixture(scope='module')
def conditional_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cfg') / 'run'
  code, _, err = finish(run_cli(workdir, '--mode=train', *CONDITIONAL))
  assert code == 0, err[-3000:]
  return workdir


def on_component(samples):
  """The component each point most probably came from, by the mixture's exact density (the tests' own formula)."""
  t = jnp.zeros(len(samples))
  return np.asarray(component_log_probs(MIXTURE, sde_lib.VPSDE(), jnp.asarray(samples, jnp.float32), t)).argmax(1)


def test_cfg_at_gamma_1_puts_each_class_on_its_component(conditional_run):
  code, out, err = finish(run_cli(conditional_run, '--mode=sample', *CONDITIONAL, '--config.sampling.condition=cfg',
                                  '--config.eval.num_samples=900'))
  assert code == 0, err[-3000:]
  stem = conditional_run / 'samples' / f'cfg_step_{STEPS}'
  arrays = np.load(f'{stem}.npz')
  samples, labels = arrays['samples'], arrays['labels']
  assert samples.shape == (900, 2) and np.bincount(labels).tolist() == [300, 300, 300]
  hits = {k: float(np.mean(on_component(samples[labels == k]) == k)) for k in range(3)}
  print('\nfraction of each class on its component at γ = 1:', hits)
  assert min(hits.values()) >= 0.9, hits
  metrics = json.loads(stem.with_suffix('.json').read_text())
  assert metrics['class_accuracy_per_class'] == pytest.approx({str(k): v for k, v in hits.items()})
  assert metrics['guidance_scale'] == 1. and (stem.with_suffix('.png')).stat().st_size > 0


def test_a_notice_between_guided_rounds_exits_75_and_writes_nothing(conditional_run, tmp_path):
  """Pre-emption reaches classifier-free sampling as it reaches plain sampling: it stops between rounds."""
  workdir = tmp_path / 'copy'
  shutil.copytree(conditional_run, workdir, ignore=shutil.ignore_patterns('samples'))
  run = Watched(workdir, '--mode=sample', *CONDITIONAL, '--config.sampling.condition=cfg',
                '--config.eval.num_samples=6000')  # 20 rounds of 300
  run.wait_for('cfg: 1/20')
  run.process.send_signal(signal.SIGTERM)
  assert run.finish() == 75, run.lines[-10:]
  assert run.messages()[-1].startswith('pre-empted (SIGTERM) after cfg round ') and 'nothing was written' in \
      run.messages()[-1], run.lines[-5:]
  assert not list(workdir.glob('samples/cfg_*'))


def test_eval_samples_every_class_and_gamma_0_is_the_mixture(conditional_run):
  """--mode eval draws class-balanced guided samples; at γ = 0 (the null label alone) a label's samples fall on
  its component only as often as the mixture puts mass there: (0.2 + 0.3 + 0.5) / 3 of the time."""
  code, _, err = finish(run_cli(conditional_run, '--mode=eval', *CONDITIONAL, '--config.sampling.guidance_scale=0',
                                '--config.eval.num_samples=600', '--config.eval.enable_bpd=False',
                                '--config.eval.enable_loss=False', '--config.eval.begin_ckpt=1',
                                '--config.eval.end_ckpt=1', '--eval_folder=eval_gamma0'))
  assert code == 0, err[-3000:]
  entry = json.loads((conditional_run / 'eval_gamma0' / 'eval_results.json').read_text())['checkpoints'][str(STEPS)]
  assert entry['labels'] == [0, 1, 2] and entry['guidance_scale'] == 0. and entry['fid']['mean'] > 0
  assert abs(entry['class_accuracy']['mean'] - 1. / 3) < 0.08, entry['class_accuracy']


def test_likelihood_of_x_given_its_label_and_of_x_alone(conditional_run):
  """bpd of x given its label against the exact -log2 N(x; μ_y, s_y²) / D, and of x alone (the null label, trained
  on a tenth of the batches: looser) against the exact -log2 p(x) / D; the two differ by about 0.76 bits here."""
  from score_sde.runner import modes
  config = config_table.load(TOY)
  for dotted, value in FIELDS.items():
    section, field = dotted.split('.')
    config[section][field] = value
  validate.resolve_num_classes(config)
  bpd = {}
  for condition in ('label', 'none'):
    config.eval.bpd_condition = condition
    bpd[condition] = modes.run(config, str(conditional_run), 'likelihood')['bpd_mean']
  from score_sde import datasets
  batches = list(datasets.get_dataset(config).eval_batches())
  x = np.concatenate([b['image'] for b in batches])
  y = np.concatenate([b['label'] for b in batches])
  log_joint = np.asarray(component_log_probs(MIXTURE, sde_lib.VPSDE(), jnp.asarray(x), jnp.zeros(len(x))), np.float64)
  bits = -1. / (2 * np.log(2))  # nats of a 2-D point -> bits per dimension
  exact = {'label': bits * np.mean(log_joint[np.arange(len(y)), y] - np.log(np.asarray(MIXTURE.weights)[y])),
           'none': bits * np.mean(np.logaddexp.reduce(log_joint, axis=1))}
  print(f"\nbpd given the label {bpd['label']:.3f} (exact {exact['label']:.3f}), alone {bpd['none']:.3f} (exact "
        f"{exact['none']:.3f})")
  assert abs(bpd['label'] - exact['label']) < 0.1 and abs(bpd['none'] - exact['none']) < 0.25, (bpd, exact)


def test_a_label_outside_the_model_exits_2_in_one_line(conditional_run):
  code, _, err = finish(run_cli(conditional_run, '--mode=sample', *CONDITIONAL, '--config.sampling.condition=cfg',
                                '--config.sampling.labels=1,3'))
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2 and len(lines) == 1 and "outside the model's classes 0..2" in lines[0], err[-2000:]
  assert not (conditional_run / 'samples').exists() or not list((conditional_run / 'samples').glob('*1,3*'))


def quickstart(path='quickstart_cond.py', **fields):
  config = config_table.load(str(REPO / 'configs' / path))
  for dotted, value in fields.items():
    section, field = dotted.split('__')
    config[section][field] = value
  return config


BAD = {  # what a tired researcher types -> the one line it gets
    'label outside the classes': (dict(sampling__condition='cfg', sampling__labels='3,12'),
                                  "outside the model's classes 0..9"),
    'cfg on an unconditional model': (dict(path='quickstart.py', sampling__condition='cfg'),
                                      'needs a class-conditional model'),
    'fewer classes than the data': (dict(model__num_classes=5), 'fewer than the 10 classes'),
    'negative guidance scale': (dict(sampling__guidance_scale=-1.), 'sampling.guidance_scale=-1.0'),
    'interval upside down': (dict(sampling__condition='cfg', sampling__guidance_interval='5,0.3'),
                             'sampling.guidance_interval'),
    'label dropout above 1': (dict(training__label_dropout=1.5), 'training.label_dropout=1.5'),
    'label dropout, unconditional': (dict(path='quickstart.py', training__label_dropout=0.1),
                                     'model.num_classes=0'),
    'classes of unlabelled data': (dict(data__dataset='celeb_a', data__image_size=8), 'has no labels'),
    'interval that is not two numbers': (dict(sampling__guidance_interval='0.3'), 'two noise levels'),
    'classifier with cfg': (dict(sampling__condition='cfg', sampling__classifier='noisy_digits'),
                            "guidance needs sampling.condition='class'"),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_guidance_input_is_one_line_before_anything_runs(case):
  fields, message = BAD[case]
  with pytest.raises(validate.ConfigError) as error:
    validate.validate(quickstart(**fields), 'sample')
  assert message in str(error.value) and '\n' not in str(error.value), str(error.value)
