"""The model card: everything a user (and the service) needs to know about a model without
loading it, and everything predicting needs besides the estimator itself.

A card is JSON (``card.json`` beside the model's files). It carries the rule catalogue the
model knows (copied from ``training_zoo``'s registry when the model was trained, so predicting
and serving never import ``training_zoo`` or torch), the label sets, the zoo it was trained on
(spec and spec hash, network count), the evaluation metrics, the expected-accuracy table over
the virtual-experiment grid (units x sessions x noise), the ranges of the training
recordings' circumstances (stimuli, sessions, units per area, output area), the verdict thresholds, the commit, and
the sha256 of every file of the model.

The model's content hash is the sha256 of the card's canonical JSON (:func:`card_sha256`):
the card lists each file's sha256, so that one hash commits to every byte of the model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rulefinder.vocabulary import FAMILIES, NOISE_LEVELS, OPTIMIZERS

#: Bump when a card field changes meaning; loaders refuse cards of a newer schema.
CARD_SCHEMA_VERSION = 1
#: The label targets every model predicts.
TARGETS: tuple[str, ...] = ("rule", "family", "optimizer")


class VariantEntry(BaseModel):
    """One implementation variant of a rule (``training_zoo.rules.base.Variant``)."""

    id: str
    description: str = ""
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RuleEntry(BaseModel):
    """One rule of the catalogue, as ``training_zoo.rules.catalogue()`` lists it."""

    id: str
    family: str
    description: str
    reference: str
    architectures: list[str] = Field(default_factory=list)
    variants: list[VariantEntry] = Field(default_factory=list)

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"family {v!r}: expected one of {', '.join(FAMILIES)}")
        return v


class ZooInfo(BaseModel):
    """The zoo a model was trained on."""

    spec: Any = Field(default=None, description="The zoo spec (parsed YAML) or its name.")
    spec_hash: str | None = Field(default=None, description="sha256 of the spec's canonical JSON.")
    store: str | None = Field(default=None, description="Where the store was (informational).")
    n_networks: int = Field(default=0, ge=0)
    n_shards: int = Field(default=0, ge=0)
    rules: dict[str, int] = Field(default_factory=dict, description="Networks per rule.")


class TrainingRanges(BaseModel):
    """The circumstances of the model's training recordings (full ones and virtual experiments),
    each as ``[min, max]`` over them: what a recording must lie within for the held-out numbers
    to describe it (``predict`` warns outside). ``None``: not known."""

    stimuli: tuple[int, int] | None = Field(default=None, description="Stimuli per recording.")
    sessions: tuple[int, int] | None = Field(default=None, description="Sessions per recording.")
    units_per_area: tuple[int, int] | None = Field(default=None, description="Units in one area of a recording.")
    output_area: list[bool] = Field(
        default_factory=list,
        description="Whether training recordings had the network's output units as an area: [true], [false] or both.",
    )

    @field_validator("stimuli", "sessions", "units_per_area")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 1 <= v[0] <= v[1]:
            raise ValueError(f"range {list(v)}: expected [min, max] with 1 <= min <= max")
        return v


class AccuracyCell(BaseModel):
    """Held-out rule accuracy for recordings of one size and noise level."""

    units: int = Field(ge=1, description="Units in the recording's smallest area.")
    sessions: int = Field(ge=1)
    noise: str
    accuracy: float = Field(ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=0, description="Held-out recordings the accuracy was measured on.")
    confusable: list[list[str]] = Field(
        default_factory=list, description="Rule pairs most often confused with each other at this size."
    )

    @field_validator("noise")
    @classmethod
    def _known_noise(cls, v: str) -> str:
        if v not in NOISE_LEVELS:
            raise ValueError(f"noise {v!r}: expected one of {', '.join(NOISE_LEVELS)}")
        return v


class ModelCard(BaseModel):
    """What a model is, what it knows, how well it does. See the module docstring."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    schema_version: int = CARD_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    commit: str | None = Field(default=None, description="git commit the model was trained at.")
    estimator: str = Field(description="Fully qualified class of the estimator (must live in rulefinder.classify).")
    description: str = ""
    catalogue: list[RuleEntry]
    labels: dict[str, list[str]] = Field(description="Label set per target (rule, family, optimizer), in the estimator's class order.")
    zoo: ZooInfo = Field(default_factory=ZooInfo)
    n_networks: int = Field(default=0, ge=0, description="Zoo networks the model was fitted on.")
    n_samples: int = Field(default=0, ge=0, description="Training recordings (networks x virtual experiments).")
    metrics: dict[str, Any] = Field(default_factory=dict)
    expected_accuracy: list[AccuracyCell] = Field(default_factory=list)
    training_ranges: TrainingRanges | None = Field(
        default=None, description="Ranges of the training recordings' circumstances (cards before session 11 lack them)."
    )
    thresholds: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="File name -> sha256 of every file of the model.")
    notes: list[str] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v > CARD_SCHEMA_VERSION:
            raise ValueError(f"schema_version {v}: this rulefinder reads cards up to version {CARD_SCHEMA_VERSION}; upgrade rulefinder")
        return v

    @model_validator(mode="after")
    def _labels_match_catalogue(self) -> ModelCard:
        missing = [t for t in TARGETS if t not in self.labels]
        if missing:
            raise ValueError(f"labels: missing targets {missing}; expected {list(TARGETS)}")
        known = {r.id for r in self.catalogue}
        unknown = [r for r in self.labels["rule"] if r not in known]
        if unknown:
            raise ValueError(f"labels.rule: rules {unknown} are not in the card's catalogue")
        bad_opt = [o for o in self.labels["optimizer"] if o not in OPTIMIZERS]
        if bad_opt:
            raise ValueError(f"labels.optimizer: {bad_opt}: expected some of {list(OPTIMIZERS)}")
        return self

    # -- helpers -------------------------------------------------------------------------

    def rule(self, rule_id: str) -> RuleEntry:
        for r in self.catalogue:
            if r.id == rule_id:
                return r
        raise KeyError(f"rule {rule_id!r} is not in model {self.name!r}'s catalogue")

    def grid(self) -> dict[str, list]:
        """The axes of the expected-accuracy table."""
        cells = self.expected_accuracy
        return {
            "units": sorted({c.units for c in cells}),
            "sessions": sorted({c.sessions for c in cells}),
            "noise": [n for n in NOISE_LEVELS if any(c.noise == n for c in cells)],
        }

    def dump(self) -> dict:
        """The card as JSON data; fields added after schema version 1 are left out while unset,
        so an older card keeps its bytes and its content hash."""
        return self.model_dump(mode="json", exclude={"training_ranges"} if self.training_ranges is None else None)

    def to_json(self) -> str:
        return json.dumps(self.dump(), indent=2, sort_keys=False) + "\n"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def card_sha256(card: ModelCard) -> str:
    """The model's content hash: sha256 of the card's canonical JSON (which lists every file's sha256)."""
    return hashlib.sha256(canonical_json(card.dump())).hexdigest()


def spec_hash(spec: Any) -> str:
    """sha256 of a zoo spec's canonical JSON (a parsed YAML mapping, or a string)."""
    return hashlib.sha256(canonical_json(spec)).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(repo: Path | None = None) -> str | None:
    """The current commit of the checkout, with ``+dirty`` when it has local changes; None outside git."""
    cwd = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def catalogue_entries(raw: list[dict]) -> list[RuleEntry]:
    """Cards from ``training_zoo.rules.catalogue()`` output (the caller imports training_zoo)."""
    return [RuleEntry.model_validate(e) for e in raw]
