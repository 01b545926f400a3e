"""The project's shared names, in one place: every module imports them from here.

Changing a name here changes a public contract (store metadata, model cards, the REST API):
see ../shared/DESIGN.md ("Vocabulary").
"""

from __future__ import annotations

import math

#: Rule families; a rule belongs to exactly one.
FAMILIES: tuple[str, ...] = (
    "backprop",
    "feedback_alignment",
    "energy_based",
    "predictive_coding",
    "target_propagation",
    "dendritic",
    "reinforcement",
    "hebbian",
    "local_objective",
)

#: Optimizers through which a rule's update is applied (a label separate from the rule).
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")

#: Architecture families of the zoo.
ARCH_FAMILIES: tuple[str, ...] = ("mlp", "resmlp", "cnn")

#: Noise levels as signal-to-noise ratios: the variance of a unit's mean responses across
#: stimuli over the variance of its trial-to-trial noise (inf = no noise).
NOISE_LEVELS: dict[str, float] = {"none": math.inf, "moderate": 2.0, "high": 0.5}
SNR_NONE = NOISE_LEVELS["none"]
SNR_MODERATE = NOISE_LEVELS["moderate"]
SNR_HIGH = NOISE_LEVELS["high"]
#: The noise level assumed for a recording when its user does not give one.
DEFAULT_NOISE = "moderate"

#: A prediction's verdict.
VERDICTS: tuple[str, ...] = ("identified", "uncertain", "unknown")

#: Metadata every zoo network carries (``NetworkRecord.metadata``).
METADATA_KEYS: tuple[str, ...] = ("rule", "family", "optimizer", "architecture", "arch_family", "task", "seed")
#: Metadata a zoo network may carry, with the value it reads as where absent (records written
#: before the field existed): the rule's implementation variant (``LearningRule.variants``).
METADATA_DEFAULTS: dict[str, str] = {"variant": "default"}
#: The string-valued metadata the store keeps as arrays (one value per network).
STRING_METADATA: tuple[str, ...] = (
    "rule", "family", "variant", "optimizer", "architecture", "arch_family", "task",
)

#: The recording dims (``rulefinder.recording``) and the zoo store's extra dims.
RECORDING_DIMS: tuple[str, ...] = ("session", "stimulus", "unit")
ZOO_DIMS: tuple[str, ...] = ("network", "layer", "checkpoint")
