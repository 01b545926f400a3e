"""Advice before recording: the accuracy to expect for a recording of a given size and noise,
the rule pairs that stay confusable at that size, and the smallest recording that reaches a
target accuracy. Read from the model card's expected-accuracy table (held-out zoo recordings
measured over units x sessions x noise); the estimator is not loaded.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rulefinder.classify.card import AccuracyCell, ModelCard
from rulefinder.classify.predict import expected_accuracy
from rulefinder.classify.registry import DEFAULT_MODEL, LoadedModel, ModelRegistry, get_registry
from rulefinder.classify.result import ModelRef
from rulefinder.vocabulary import DEFAULT_NOISE, NOISE_LEVELS


class PlanOption(BaseModel):
    """A recording size (units in the smallest area, sessions) and its expected accuracy."""

    units: int
    sessions: int
    accuracy: float


class PlanResult(BaseModel):
    """What :func:`plan` answers."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    units: int = Field(description="Planned units in the smallest area.")
    sessions: int
    noise: str
    expected_accuracy: float | None = Field(description="Rule accuracy of the table cell at or below this size.")
    cell: AccuracyCell | None = Field(description="The table cell used (nearest at or below the planned size).")
    confusable_pairs: list[list[str]] = Field(default_factory=list, description="Rule pairs that stay confusable at this size.")
    target: float | None = None
    reaches_target: bool | None = None
    smallest_for_target: PlanOption | None = Field(
        default=None, description="The smallest grid recording (fewest units x sessions) reaching the target at this noise."
    )
    options_for_target: list[PlanOption] = Field(
        default_factory=list, description="For each session count of the grid, the fewest units that reach the target."
    )
    warnings: list[str] = Field(default_factory=list)


def _card(model: str | LoadedModel | None, registry: ModelRegistry | None) -> tuple[ModelCard, ModelRef]:
    if isinstance(model, LoadedModel):
        return model.card, model.ref
    entry = (registry or get_registry()).entry(model or DEFAULT_MODEL)
    return entry.card, ModelRef(name=entry.name, sha256=entry.sha256)


def plan(
    units: int,
    sessions: int,
    noise: str = DEFAULT_NOISE,
    target: float | None = None,
    model: str | LoadedModel | None = None,
    registry: ModelRegistry | None = None,
) -> PlanResult:
    """Expected accuracy for ``units`` (in the smallest area) x ``sessions`` at ``noise``, and
    with ``target`` the smallest recording that reaches it."""
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise is {noise!r}: expected one of {', '.join(NOISE_LEVELS)}")
    if units < 1 or sessions < 1:
        raise ValueError(f"units and sessions must be at least 1 (found units={units}, sessions={sessions})")
    if target is not None and not 0.0 < target <= 1.0:
        raise ValueError(f"target is {target}: expected an accuracy in (0, 1]")
    card, ref = _card(model, registry)
    cell, warnings = expected_accuracy(card, units, sessions, noise)
    result = PlanResult(
        model=ref,
        units=units,
        sessions=sessions,
        noise=noise,
        expected_accuracy=None if cell is None else cell.accuracy,
        cell=cell,
        confusable_pairs=[] if cell is None else cell.confusable,
        target=target,
        warnings=warnings,
    )
    if target is None:
        return result
    cells = [c for c in card.expected_accuracy if c.noise == noise]
    result.reaches_target = cell is not None and cell.accuracy >= target
    per_sessions: dict[int, AccuracyCell] = {}
    for c in sorted(cells, key=lambda c: (c.sessions, c.units)):
        if c.accuracy >= target and c.sessions not in per_sessions:
            per_sessions[c.sessions] = c
    result.options_for_target = [PlanOption(units=c.units, sessions=c.sessions, accuracy=c.accuracy) for c in per_sessions.values()]
    if per_sessions:
        best = min(per_sessions.values(), key=lambda c: (c.units * c.sessions, c.sessions))
        result.smallest_for_target = PlanOption(units=best.units, sessions=best.sessions, accuracy=best.accuracy)
    else:
        top = max(cells, key=lambda c: c.accuracy, default=None)
        result.warnings.append(
            f"no recording on the grid reaches {target:.0%} at noise {noise!r}"
            + (f" (best: {top.accuracy:.0%} with {top.units} units x {top.sessions} sessions)" if top else "")
        )
    return result
