"""Detection scoring: score tokens and passages with a direction, a fitted probe or an SAE feature, and measure
how well the scores separate labelled texts (AUROC, F1)."""

from polysteer.plugins.detection.scoring import (
    DetectionMetrics,
    Detector,
    DirectionDetector,
    FeatureDetector,
    FinderDetector,
    TokenActivations,
    best_f1_threshold,
    detection_metrics,
    feature_codes,
    pool_tokens,
)

__all__ = [
    "DetectionMetrics", "Detector", "DirectionDetector", "FeatureDetector", "FinderDetector", "TokenActivations",
    "best_f1_threshold", "detection_metrics", "feature_codes", "pool_tokens",
]
