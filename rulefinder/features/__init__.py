"""Features: recordings (zoo or lab) -> evidence a classifier can use.

See docs/features.md. The per-session statistics live in ``statistics``, the canonical time grid
in ``resample``, the per-recording / batched paths and the scikit-learn transformer in
``extractor``.
"""

from rulefinder.features.extractor import (
    DEPTH_FEATURES,
    FeatureExtractor,
    block_features,
    feature_names,
    flatten,
    recording_features,
)
from rulefinder.features.resample import DEFAULT_N_TIMES, canonical_grid, relative_time, resample
from rulefinder.features.statistics import (
    EXTRA_STATS,
    NAYEBI_STATS,
    STAT_NAMES,
    area_scale,
    session_statistics,
)

__all__ = [
    "DEFAULT_N_TIMES",
    "DEPTH_FEATURES",
    "EXTRA_STATS",
    "FeatureExtractor",
    "NAYEBI_STATS",
    "STAT_NAMES",
    "area_scale",
    "block_features",
    "canonical_grid",
    "feature_names",
    "flatten",
    "recording_features",
    "relative_time",
    "resample",
    "session_statistics",
]
