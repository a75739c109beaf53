"""Metrics against their textbook formulas, computed independently here."""
import numpy as np
import pytest
from scipy import linalg

from score_sde.metrics import formulas


def test_fid_equals_the_sqrtm_formula():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(500, 16))
  b = rng.normal(loc=0.3, scale=1.5, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5
  mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a.T), np.cov(b.T)
  expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
  assert formulas.fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
  assert formulas.fid_from_features(a, a) == pytest.approx(0., abs=1e-6)


def test_fid_of_two_known_gaussians():
  """N(0, I) vs N(m, 4 I) in d dims: FID = ‖m‖² + d (1 + 4 - 2·2) = ‖m‖² + d."""
  rng = np.random.default_rng(1)
  d = 4
  a = rng.normal(size=(200_000, d))
  b = 2 * rng.normal(size=(200_000, d)) + 1.
  assert formulas.fid_from_features(a, b) == pytest.approx(d * 1. + d, rel=0.02)


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(60, 5)), rng.normal(loc=0.5, size=(70, 5))
  k = lambda x, y: (x @ y / 5 + 1) ** 3
  n, m = len(a), len(b)
  xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
  assert formulas.kid_from_features(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
  # Same distribution: near zero next to a shifted one.
  c = rng.normal(size=(2000, 5))
  shifted = formulas.kid_from_features(c[:1000], c[1000:] + 1.)
  assert abs(formulas.kid_from_features(c[:1000], c[1000:])) < 0.05 * shifted


def test_inception_score_formula_and_limits():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1000, 10)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  parts = np.array_split(p, 10)
  expected = np.mean([np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0))), 1))) for q in parts])
  assert formulas.inception_score_from_logits(logits, splits=10) == pytest.approx(expected, rel=1e-9)
  # Confident and evenly spread over 10 classes: IS = 10. Identical predictions: IS = 1.
  confident = np.tile(np.eye(10) * 100., (10, 1))
  assert formulas.inception_score_from_logits(confident, splits=1) == pytest.approx(10., rel=1e-6)
  assert formulas.inception_score_from_logits(np.zeros((50, 10)), splits=1) == pytest.approx(1.)


def test_sample_metrics_on_gaussians_match_the_closed_forms():
  """Features ~ N(μ, I) against N(0, I): FID → ‖μ‖² (equal covariances), KID → about 0 for μ = 0 and > 0
  otherwise; confident logits spread evenly over 10 classes → IS = 10."""
  rng = np.random.default_rng(0)
  d, n = 4, 4000
  shift = np.array([1., 0.5, 0., 0.])
  reference = rng.standard_normal((n, d))
  same = formulas.sample_metrics(rng.standard_normal((n, d)), None, reference, num_bootstrap=5)
  moved = formulas.sample_metrics(rng.standard_normal((n, d)) + shift, None, reference, num_bootstrap=5)
  assert abs(same['fid']['mean']) < 0.02 and abs(moved['fid']['mean'] - shift @ shift) < 0.06, (same, moved)
  assert 0 < moved['fid']['stderr'] < 0.1
  assert abs(same['kid']['mean']) < 3 * same['kid']['stderr'] + 1e-3 and moved['kid']['mean'] > 0.05
  logits = np.full((1000, 10), -30.)
  logits[np.arange(1000), np.arange(1000) % 10] = 30.
  scored = formulas.sample_metrics(reference[:1000], logits, reference, num_bootstrap=2)
  assert abs(scored['inception_score']['mean'] - 10.) < 1e-6


def test_paired_fid_difference_stderr_is_the_spread_over_fresh_pairs():
  """Pairs share a latent z: a = 1.3 z + noise, b = 1.5 z + noise. The paired bootstrap stderr of FID(a) − FID(b) must
  match the spread of that difference over fresh draws (Monte Carlo), far below the unpaired stderrs combined."""
  rng = np.random.default_rng(3)
  n, d = 400, 3
  reference = rng.normal(size=(5000, d))

  def draw():
    z = rng.normal(size=(n, d))
    return 1.3 * z + 0.2 * rng.normal(size=(n, d)), 1.5 * z + 0.2 * rng.normal(size=(n, d))

  def sqrtm_fid(x):  # the textbook formula, independently of formulas.frechet_distance_to
    mu, s, mu_r, s_r = x.mean(0), np.cov(x.T), reference.mean(0), np.cov(reference.T)
    return np.sum((mu - mu_r) ** 2) + np.trace(s + s_r - 2 * linalg.sqrtm(s @ s_r).real)

  a, b = draw()
  paired = formulas.paired_fid_difference(a, b, reference, num_bootstrap=400)
  assert paired['mean'] == pytest.approx(sqrtm_fid(a) - sqrtm_fid(b), rel=1e-6)
  spread = np.std([sqrtm_fid(x) - sqrtm_fid(y) for x, y in (draw() for _ in range(400))], ddof=1)
  assert paired['stderr'] == pytest.approx(spread, rel=0.25)
  unpaired = [formulas.sample_metrics(x, None, reference, num_bootstrap=400)['fid']['stderr'] for x in (a, b)]
  assert paired['stderr'] < 0.6 * np.hypot(*unpaired)
  same = formulas.paired_fid_difference(a, a, reference)
  assert same['mean'] == 0. and same['stderr'] == 0.
  with pytest.raises(ValueError, match='one shape'):
    formulas.paired_fid_difference(a, b[:-1], reference)
