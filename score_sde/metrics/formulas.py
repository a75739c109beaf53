"""Sample-quality metrics from network features: FID, KID and Inception Score; reference statistics files;
and batching for feature nets."""
import math
import os
import zipfile

import numpy as np


def gaussian(feats):
  """(mean, unbiased covariance) of an (n, d) feature set, in float64."""
  feats = np.asarray(feats, np.float64)
  return feats.mean(0), np.cov(feats, rowvar=False)


def fid_from_features(feats_a, feats_b):
  """Fréchet distance of Gaussians fitted to two (n, d) feature sets (Heusel et al. 2017).

  ‖μ_a - μ_b‖² + tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½), with unbiased covariances.
  """
  return frechet_distance(*gaussian(feats_a), *gaussian(feats_b))


def frechet_distance(mu_a, cov_a, mu_b, cov_b):
  """Fréchet distance of N(mu_a, cov_a) and N(mu_b, cov_b)."""
  return frechet_distance_to(mu_b, cov_b)(mu_a, cov_a)


def frechet_distance_to(mu_ref, cov_ref):
  """f(mu, cov) -> Fréchet distance of N(mu, cov) to N(mu_ref, cov_ref), the reference's square root taken once.

  tr (Σ Σ_ref)^½ is Σ_i √λ_i over the eigenvalues λ of the symmetric PSD Σ_ref^½ Σ Σ_ref^½ (same spectrum as
  Σ Σ_ref): equal to scipy's sqrtm route, with no complex parts for singular covariances, and at d = 2048 one
  eigvalsh per call (13 s here) instead of a sqrtm (122 s), which matters for bootstrap stderrs.
  """
  mu_ref, cov_ref = np.asarray(mu_ref, np.float64), np.asarray(cov_ref, np.float64)
  w, v = np.linalg.eigh(cov_ref)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  trace_ref = np.trace(cov_ref)

  def distance(mu, cov):
    mu, cov = np.asarray(mu, np.float64), np.asarray(cov, np.float64)
    lam = np.linalg.eigvalsh(root @ cov @ root)
    return float(np.sum((mu - mu_ref) ** 2) + np.trace(cov) + trace_ref - 2 * np.sum(np.sqrt(np.clip(lam, 0, None))))
  return distance


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


KID_UNAVAILABLE = 'eval.reference_stats holds mu/sigma only; KID needs its pool_3 features'


# --- metrics with standard errors, as --mode eval reports them ---------------------------------------------------------------------------------

def mean_stderr(values):
  values = np.asarray(values, np.float64)
  stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float('nan')
  return {'mean': float(values.mean()), 'stderr': float(stderr)}


def sample_metrics(features, logits, reference, num_splits=10, num_bootstrap=10, seed=0):
  """FID on all samples (stderr by bootstrap over the samples); KID and IS as mean ± stderr over
  num_splits disjoint parts of the samples (KID against an equally large random part of the reference).
  reference: (n, d) features, or {'mu', 'sigma'} of them (FID only; KID is reported unavailable)."""
  rng = np.random.default_rng(seed)
  ref_mu, ref_sigma = ((reference['mu'], reference['sigma']) if isinstance(reference, dict)
                       else gaussian(reference))
  to_reference = frechet_distance_to(ref_mu, ref_sigma)
  fid_to_reference = lambda f: to_reference(*gaussian(f))
  fid = fid_to_reference(features)
  boot = [fid_to_reference(features[rng.integers(0, len(features), len(features))]) for _ in range(num_bootstrap)]
  parts = np.array_split(np.arange(len(features)), min(num_splits, len(features) // 2))
  result = {'fid': {'mean': fid, 'stderr': float(np.std(boot, ddof=1)) if num_bootstrap > 1 else float('nan')},
            'kid': {'unavailable': KID_UNAVAILABLE}}
  if not isinstance(reference, dict):
    short = len(reference) < len(parts[0])
    result['kid'] = mean_stderr([kid_from_features(
        features[p], reference[rng.choice(len(reference), len(p), replace=short)]) for p in parts])
  if logits is not None:
    result['inception_score'] = mean_stderr([inception_score_from_logits(logits[p], splits=1)
                                              for p in parts])
  return result


def paired_fid_difference(features_a, features_b, reference, num_bootstrap=200, seed=0):
  """FID(a) − FID(b) to the same (n, d) reference, with a paired bootstrap stderr: row i of a and of b are one
  pair (e.g. two models' samples from the same latent), and every resample draws the same rows from both, so
  what the pairs share cancels from the stderr."""
  features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if features_a.shape != features_b.shape:
    raise ValueError(f'paired features must have one shape, not {features_a.shape} and {features_b.shape}')
  to_reference = frechet_distance_to(*gaussian(reference))
  difference = lambda rows: to_reference(*gaussian(features_a[rows])) - to_reference(*gaussian(features_b[rows]))
  rng = np.random.default_rng(seed)
  n = len(features_a)
  boot = [difference(rng.integers(0, n, n)) for _ in range(num_bootstrap)]
  return {'mean': difference(np.arange(n)), 'stderr': float(np.std(boot, ddof=1))}


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


# --- reference statistics files (the official score_sde layout) ---------------------------------------------------

def _npz_shapes(path):
  """{key: shape} of an .npz, read from the array headers only (a 50,000 x 2048 pool_3 is not loaded)."""
  shapes = {}
  with zipfile.ZipFile(path) as archive:
    for name in archive.namelist():
      if name.endswith('.npy'):
        with archive.open(name) as f:
          major, _ = np.lib.format.read_magic(f)
          read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
          shapes[name[:-4]] = read(f)[0]
  return shapes


def check_reference_stats(path, dim=2048):
  """Raises ValueError (one line) unless `path` is an .npz with 'pool_3' (n, dim), n >= 2 (FID and KID), or
  'mu' (dim,) and 'sigma' (dim, dim) (FID only). Returns 'pool_3' or 'mu_sigma'. Reads no array data."""
  expected = f"expected 'pool_3' (n, {dim}) or 'mu' ({dim},) and 'sigma' ({dim}, {dim})"
  if not os.path.isfile(path):
    raise ValueError(f'reference statistics {path} not found; make them with experiments/fid_stats.py')
  try:
    shapes = _npz_shapes(path)
  except (zipfile.BadZipFile, ValueError, OSError) as error:
    raise ValueError(f'reference statistics {path} is not a readable .npz ({error})') from None
  found = ', '.join(f'{k} {v}' for k, v in sorted(shapes.items())) or 'no arrays'
  if 'pool_3' in shapes:
    n_d = shapes['pool_3']
    if len(n_d) != 2 or n_d[1] != dim or n_d[0] < 2:
      raise ValueError(f'reference statistics {path}: pool_3 has shape {n_d}; {expected}')
    return 'pool_3'
  if shapes.get('mu') == (dim,) and shapes.get('sigma') == (dim, dim):
    return 'mu_sigma'
  raise ValueError(f'reference statistics {path} holds {found}; {expected}')


def load_reference_stats(path, dim=2048):
  """{'pool_3': (n, dim) or None, 'mu': (dim,), 'sigma': (dim, dim)} in float64 from a checked stats file."""
  kind = check_reference_stats(path, dim)
  with np.load(path) as data:
    if kind == 'pool_3':
      pool = np.asarray(data['pool_3'], np.float64)
      mu, sigma = gaussian(pool)
    else:
      pool, mu, sigma = None, np.asarray(data['mu'], np.float64), np.asarray(data['sigma'], np.float64)
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f'reference statistics {path} hold non-finite values')
  return {'pool_3': pool, 'mu': mu, 'sigma': sigma}
