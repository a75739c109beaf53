"""Quickstart: a small DDPM++ (the paper's NCSN++ family) on scikit-learn's 8×8 digits, VP SDE.

Offline, CPU, a few minutes:  python run.py --config configs/quickstart.py --workdir runs/quickstart --mode train
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  training = config.training
  training.sde = 'vpsde'
  training.continuous = True
  training.reduce_mean = True
  training.batch_size = 64
  training.n_iters = 1500
  training.n_jitted_steps = 25
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq = 1500
  training.snapshot_freq_for_preemption = 250

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'none'

  evaluate = config.eval
  evaluate.begin_ckpt = 1          # checkpoint k is step k * training.snapshot_freq
  evaluate.end_ckpt = 1
  evaluate.batch_size = 64
  evaluate.enable_sampling = True
  evaluate.enable_bpd = True
  evaluate.num_samples = 256       # FID/KID/IS on the digits classifier's features, in 4 rounds
  evaluate.feature_extractor = 'digits_classifier'  # a small digits classifier, not Inception
  evaluate.num_snapshot_samples = 64
  evaluate.likelihood_rtol = 1e-4  # the official 1e-5 costs ~2x the NFE
  evaluate.likelihood_atol = 1e-4

  data = config.data
  data.dataset = 'digits'   # sklearn.datasets.load_digits: 1,797 images, 8×8, 17 grey levels
  data.image_size = 8
  data.num_channels = 1
  data.num_test = 128
  data.random_flip = False
  data.centered = True
  data.uniform_dequantization = True

  model = config.model
  model.name = 'ncsnpp'       # DDPM++ settings
  model.scale_by_sigma = False
  model.ema_rate = 0.995  # short run: the EMA must forget the initialisation
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.embedding_type = 'positional'
  model.fourier_scale = 16
  model.conv_size = 3
  model.dropout = 0.

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200
  return config
