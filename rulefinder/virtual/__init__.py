"""Virtual experiments: make a recording look like what an experiment really sees.

See docs/virtual.md. Transforms live in ``transforms`` (one dataclass per op, each with a JSON
spec), the seeded composable pipeline in ``pipeline``.
"""

from rulefinder.virtual.pipeline import VIRTUAL_ATTR, VirtualExperiment, virtual_spec
from rulefinder.virtual.transforms import (
    NOISE_LEVELS,
    SNR_HIGH,
    SNR_MODERATE,
    SNR_NONE,
    TRANSFORMS,
    Calcium,
    DropAreas,
    GaussianNoise,
    KeepSessions,
    KeepStimuli,
    KeepUnits,
    PoissonCounts,
    ScaleOffset,
    Transform,
    TrialVariability,
    UnitLoss,
    VirtualSpecError,
    parse_step,
    snr_value,
)

__all__ = [
    "NOISE_LEVELS",
    "SNR_HIGH",
    "SNR_MODERATE",
    "SNR_NONE",
    "TRANSFORMS",
    "VIRTUAL_ATTR",
    "Calcium",
    "DropAreas",
    "GaussianNoise",
    "KeepSessions",
    "KeepStimuli",
    "KeepUnits",
    "PoissonCounts",
    "ScaleOffset",
    "Transform",
    "TrialVariability",
    "UnitLoss",
    "VirtualExperiment",
    "VirtualSpecError",
    "parse_step",
    "snr_value",
    "virtual_spec",
]
