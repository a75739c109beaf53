"""EDM's CIFAR-10 recipe (Karras et al. 2022, config F, unconditional) with this package's DDPM++ (NCSN++ code).

Training as in NVlabs/edm's `train.py --arch=ddpmpp --precond=edm`:
- the EDM SDE (σ(t) = t on [0.002, 80]);
- EDM's preconditioning (σ_data = 0.5) and loss (P_mean = -1.2, P_std = 1.2);
- batch 512 and Adam at lr 1e-3 (β 0.9/0.999, ε 1e-8), ramped up linearly over 10 M images (19,531 steps),
  with no gradient clipping and no weight decay;
- EMA half-life 0.5 M images, so ema_rate = 0.5 ** (512 / 500,000) = 0.99929;
- 200 M images (390,625 steps) and dropout 0.13;
- samples from EDM's deterministic Heun sampler, 18 levels with ρ = 7 (35 NFE), down to σ_min.

The network is EDM's DDPM++ layout:
- 128 base channels with multipliers (2, 2, 2), so 256 channels at 32, 16 and 8 px;
- 4 BigGAN-style residual blocks per resolution, attention at 16 px and in the middle;
- box-filter resampling (fir=False, EDM's resample_filter [1, 1]);
- the positional embedding of c_noise = ¼ ln σ̃, with the same features as EDM's: [sin, cos] at frequencies
  10000^{-k/63}. EDM's endpoint=True gives DDPM's frequencies, and its sin/cos swap gives DDPM's order;
- the standard encoder and decoder (no progressive paths);
- skip connections scaled by 1/√2, GroupNorm with min(C/4, 32) groups and ε = 1e-6.

It has 55,732,739 parameters (jax.eval_shape of the init). EDM's SongUNet (ddpmpp, unconditional, no
augmentation labels) has exactly as many, its "55.7 M", counted layer by layer from NVlabs/edm's networks.py.

What differs from EDM's SongUNet and training:
- EDM's non-leaking augmentation is absent here: probability 0.12 with 9 augmentation labels conditioning the
  network. Only the random horizontal flip remains (data.random_flip). EDM reports the augmentation against
  overfitting on CIFAR-10, so expect a worse FID than 1.97 without it.
- EDM's EMA has a ramp-up, a half-life of at most 0.05 × images seen. Here the EMA rate is fixed.
- Initialisation: DDPM's variance scaling (fan-average uniform, i.e. Xavier uniform) with 1e-10 on the last
  convolution of each block and of the output. EDM uses Xavier uniform with 1e-5 there.
- The loss is averaged over dimensions (training.reduce_mean). EDM sums over them. Adam is invariant to that
  constant, up to its ε.
"""
from configs.default_cifar10_configs import get_default_configs

BATCH = 512
EMA_HALF_LIFE_IMAGES = 500_000


def get_config():
  config = get_default_configs()
  # training
  training = config.training
  training.sde = 'edm'
  training.continuous = True
  training.reduce_mean = True
  training.loss = 'edm'
  training.p_mean = -1.2
  training.p_std = 1.2
  training.batch_size = BATCH
  training.n_iters = 200_000_000 // BATCH  # 200 M images: 390,625 steps

  # sampling: EDM's deterministic Heun sampler (35 NFE)
  sampling = config.sampling
  sampling.method = 'edm_heun'
  sampling.num_steps = 18
  sampling.rho = 7.
  sampling.s_churn = 0.
  sampling.eps = 0.  # the SDE's own end, σ_min = 0.002

  # data
  data = config.data
  data.centered = True
  data.random_flip = True
  data.uniform_dequantization = False

  # model
  model = config.model
  model.name = 'ncsnpp'
  model.parametrization = 'edm'
  model.sigma_data = 0.5
  model.sigma_min = 0.002
  model.sigma_max = 80  # an int: the default config holds an int here
  model.scale_by_sigma = False
  model.ema_rate = 0.5 ** (BATCH / EMA_HALF_LIFE_IMAGES)  # 0.99929: half-life 0.5 M images
  model.dropout = 0.13
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 1]
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

  # optimisation
  optim = config.optim
  optim.optimizer = 'Adam'
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0
  optim.warmup = 10_000_000 // BATCH  # ramp-up over 10 M images: 19,531 steps
  optim.grad_clip = -1.  # EDM does not clip gradients

  return config
