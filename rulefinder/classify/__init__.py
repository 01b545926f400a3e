"""Identify the rule: store -> virtual experiments -> features, estimators, calibration, the
open-set score, the model registry and cards, and the one prediction result.

Never imports ``training_zoo``: the rule catalogue a model knows travels in its card.
"""

from rulefinder.classify.result import AreaPrediction, ModelRef, PredictionResult

__all__ = ["AreaPrediction", "ModelRef", "PredictionResult"]
