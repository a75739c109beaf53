"""A 2-D Gaussian mixture with a small MLP score network: trains and samples in seconds on CPU."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.sde = 'vpsde'
  training.continuous = True
  training.likelihood_weighting = False
  training.reduce_mean = True
  training.batch_size = 512
  training.n_iters = 4000
  training.n_jitted_steps = 50
  training.log_freq = 200
  training.eval_freq = 500
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 500
  training.snapshot_sampling = True

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 2
  evaluate.batch_size = 1000
  evaluate.enable_sampling = True
  evaluate.num_samples = 4000
  evaluate.enable_loss = True
  evaluate.enable_bpd = True
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_repeats = 1
  evaluate.num_reference = 4000     # FID/KID on the points themselves (no feature network for 2-D data)
  evaluate.stats_dir = ''
  evaluate.num_splits = 10
  evaluate.num_bootstrap = 10

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'gmm'  # see score_sde.toy.TOY_DISTRIBUTIONS
  data.centered = False  # the SDE state is the data itself (no [0, 1] → [-1, 1] scaling)
  data.uniform_dequantization = False
  data.num_train = 50_000
  data.num_test = 4_000

  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'
  model.nf = 128
  model.num_layers = 3
  model.nonlinearity = 'swish'
  model.embedding_type = 'positional'
  model.fourier_scale = 16.
  model.scale_by_sigma = False
  model.ema_rate = 0.999
  model.sigma_min = 0.01
  model.sigma_max = 10.
  model.beta_min = 0.1
  model.beta_max = 20.
  model.num_scales = 1000
  model.dropout = 0.

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 2e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.
  optim.warmup = 100
  optim.grad_clip = 1.
  return config
