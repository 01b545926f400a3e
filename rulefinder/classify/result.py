"""The one prediction result: what the CLI prints, the REST API returns and the client parses.

Contract: ../shared/DESIGN.md ("A prediction result holds at least ..."). Extra fields may be
added; the named ones keep their names and meaning.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rulefinder.vocabulary import DEFAULT_NOISE, NOISE_LEVELS

Verdict = Literal["identified", "uncertain", "unknown"]
NoiseLevel = Literal[tuple(NOISE_LEVELS)]  # type: ignore[valid-type]

#: How far a probability table may be from summing to one (float32 arithmetic upstream).
SUM_TOLERANCE = 1e-4


def _check_distribution(value: dict[str, float], name: str) -> dict[str, float]:
    if not value:
        raise ValueError(f"{name} is empty")
    bad = {k: v for k, v in value.items() if not (0.0 <= v <= 1.0) or math.isnan(v)}
    if bad:
        raise ValueError(f"{name}: probabilities outside [0, 1]: {bad}")
    total = sum(value.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{name}: probabilities sum to {total:.6f}, expected 1")
    return value


class ModelRef(BaseModel):
    """Which model answered: its registry name and the sha256 of its files."""

    name: str
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class AreaPrediction(BaseModel):
    """The rule probabilities read from one area alone."""

    area: str
    units: int = Field(ge=0)
    depth: float | None = Field(default=None, description="Relative depth 0 (input) .. 1 (output); null if unknown.")
    rule_probabilities: dict[str, float]

    _check = field_validator("rule_probabilities")(lambda v: _check_distribution(v, "rule_probabilities"))


class PredictionResult(BaseModel):
    """Rule, family and optimizer probabilities for one recording (or one group of recordings)."""

    model_config = ConfigDict(protected_namespaces=())

    rule_probabilities: dict[str, float] = Field(description="Rule id -> calibrated probability; sums to 1.")
    family_probabilities: dict[str, float]
    optimizer_probabilities: dict[str, float]
    top_rule: str
    top_family: str
    top_optimizer: str
    confusable_with: list[str] = Field(
        default_factory=list,
        description="Rules the model cannot tell apart from top_rule at this size (near-equal probability or known to converge to the same updates).",
    )
    per_area: list[AreaPrediction] = Field(default_factory=list)
    unknown_score: float = Field(ge=0.0, le=1.0, description="0 = looks like a rule of the zoo, 1 = like none of them.")
    verdict: Verdict
    expected_accuracy: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Rule accuracy measured on held-out zoo recordings of this size and noise."
    )
    noise: NoiseLevel = DEFAULT_NOISE
    n_recordings: int = Field(default=1, ge=1, description="Recordings combined into this verdict.")
    model: ModelRef
    warnings: list[str] = Field(default_factory=list)

    _rules = field_validator("rule_probabilities")(lambda v: _check_distribution(v, "rule_probabilities"))
    _families = field_validator("family_probabilities")(lambda v: _check_distribution(v, "family_probabilities"))
    _optimizers = field_validator("optimizer_probabilities")(lambda v: _check_distribution(v, "optimizer_probabilities"))
