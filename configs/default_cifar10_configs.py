"""Defaults shared by the CIFAR-10 experiments (official configs/default_cifar10_configs.py)."""
import ml_collections


def get_default_configs():
  config = ml_collections.ConfigDict()
  # training
  config.training = training = ml_collections.ConfigDict()
  config.training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  ## store additional checkpoints for preemption in cloud computing environments
  training.snapshot_freq_for_preemption = 10000
  ## produce samples at each snapshot.
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False

  # sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16

  # evaluation
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_repeats = 1          # dequantization draws per image (the official code uses 5)
  evaluate.feature_extractor = 'inception'  # FID/KID/IS network: 'inception' or 'digits_classifier'
  evaluate.inception_weights = ''       # the converted pytorch-fid weights (.npz); see README
  evaluate.num_reference = 50000        # training images behind the FID/KID reference statistics
  evaluate.stats_dir = ''               # cache of reference features; '' is ~/.cache/score_sde/stats
  evaluate.num_splits = 10              # KID and IS: mean ± stderr over this many disjoint parts of the samples
  evaluate.num_bootstrap = 10           # FID stderr: bootstrap resamples of the samples

  # data
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  data.data_dir = ''          # tensorflow-datasets data_dir; '' is ~/tensorflow_datasets
  data.download = False       # True lets tfds download and prepare the dataset (needs network)
  data.image_folder = ''      # dataset='image_folder': <image_folder>/train/<label>/*.png
  data.tfrecords_path = ''    # dataset='FFHQ' or 'CelebAHQ': the official .tfrecords file

  # model
  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 50
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'

  # optimization
  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  config.seed = 42

  return config
