"""Sample-quality metrics from network features: FID, KID and Inception Score; and batching for feature nets."""
import numpy as np
from scipy import linalg


def fid_from_features(feats_a, feats_b):
  """Fréchet distance of Gaussians fitted to two (n, d) feature sets (Heusel et al. 2017).

  ‖μ_a - μ_b‖² + tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½), with unbiased covariances.
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = linalg.sqrtm(cov_a @ cov_b)
  if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
    offset = np.eye(cov_a.shape[0]) * 1e-6
    covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  covmean = covmean.real
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def kid_from_features(feats_a, feats_b, num_subsets=None, subset_size=1000, seed=0):
  """Kernel Inception Distance: unbiased MMD² with kernel k(x, y) = (x·y / d + 1)³ (Bińkowski et al. 2018).

  Over the full sets by default; with num_subsets, the mean over random subsets of subset_size.
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  if num_subsets is None:
    return _unbiased_mmd2(a, b)
  rng = np.random.default_rng(seed)
  m = min(subset_size, len(a), len(b))
  return float(np.mean([_unbiased_mmd2(a[rng.choice(len(a), m, replace=False)],
                                       b[rng.choice(len(b), m, replace=False)]) for _ in range(num_subsets)]))


def _unbiased_mmd2(a, b):
  d = a.shape[1]
  k_aa, k_bb, k_ab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
  n, m = len(a), len(b)
  return float((k_aa.sum() - np.trace(k_aa)) / (n * (n - 1)) + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
               - 2 * k_ab.mean())


def inception_score_from_logits(logits, splits=10):
  """exp(E_x KL(p(y|x) ‖ p(y))), averaged over `splits` equal parts (Salimans et al. 2016)."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = np.log(np.mean(np.exp(part), axis=0))
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
  return float(np.mean(scores))


def in_batches(apply, images, batch_size):
  """apply(batch) -> tuple of per-example arrays, run over `images` in fixed-size batches (the last padded with
  zeros, so each image shape compiles once); returns the tuple of concatenated numpy arrays."""
  images = np.asarray(images, np.float32)
  n, outputs = len(images), []
  for start in range(0, max(n, 1), batch_size):
    batch = images[start:start + batch_size]
    keep = len(batch)
    if keep < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - keep,) + images.shape[1:], np.float32)])
    outputs.append([np.asarray(out)[:keep] for out in apply(batch)])
  return tuple(np.concatenate(parts) for parts in zip(*outputs))
