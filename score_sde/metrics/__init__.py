"""Measuring samples: FID, KID and Inception Score from features (`formulas`), the feature networks
(`inception`, the FID Inception; `digits_classifier`, for the 8×8 digits), and the registry of feature
extractors that `eval.feature_extractor` names (`features`). Imports nothing from the runner.
"""
from score_sde.metrics.formulas import (fid_from_features, frechet_distance, inception_score_from_logits,  # noqa: F401
                                        kid_from_features)
