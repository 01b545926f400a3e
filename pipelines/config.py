"""Pipeline configs (YAML, schema in docs/pipeline.md): a zoo spec plus each stage's settings.

A config names a zoo spec (a shipped name, a path, or the spec inline), optionally overrides
fields of it, and sets each stage (train, features, fit, evaluate, register) with a time
budget in seconds. Budgets are checked, not enforced: a stage over budget is reported in the
summary (the run is not killed halfway through a zoo).
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def transform_params(params: dict) -> dict:
    """The estimator parameters its feature rows depend on, resolved with their defaults: a
    change of classifier or calibration must not invalidate the stored rows."""
    from rulefinder.classify.estimator import RuleIdentifier

    resolved = RuleIdentifier(**params).get_params()
    return {k: resolved[k] for k in ("n_times", "feature_set")}


STAGES = ("train", "features", "fit", "evaluate", "register")


class ConfigError(ValueError):
    """A config that cannot be read; the message names the file and the field."""


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget_s: float = Field(default=600.0, gt=0, description="Time budget of the stage, seconds.")


class TrainStage(_Stage):
    zoo: str | dict = Field(description="Zoo spec: a shipped name, a YAML path (relative to the config), or the spec inline.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Top-level zoo-spec fields replaced.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpus_per_task: float = Field(default=1.0, gt=0)
    gpus_per_task: float = Field(default=0.25, gt=0, le=1, description="Used only when the cluster has GPUs.")
    threads_per_task: int = Field(default=1, ge=1, description="torch/BLAS threads in each task.")
    max_retries: int = Field(default=2, ge=0, description="Retries of a task whose worker died or that raised.")


class FeaturesStage(_Stage):
    virtual: list[dict] = Field(
        default_factory=list,
        description="Virtual experiments ({'steps': [...], 'seed': N}, see docs/virtual.md) applied "
        "to every network; each gives n_draws extra samples per network.",
    )
    n_draws: int = Field(default=1, ge=1, description="Samples drawn per network from each virtual experiment.")
    include_recorded: bool = Field(default=True, description="Also the network as recorded.")
    include_diverged: bool = False
    shards_per_task: int = Field(default=8, ge=1, description="Most shards one features task handles.")

    @field_validator("virtual")
    @classmethod
    def _seeded(cls, v: list[dict]) -> list[dict]:
        # An unseeded experiment would draw fresh entropy: a resumed stage must redo the same.
        out = []
        for i, exp in enumerate(v):
            if not isinstance(exp, dict) or not isinstance(exp.get("steps"), list):
                raise ValueError(f"virtual[{i}]: expected {{'steps': [...], 'seed': N}}, found {exp!r}")
            out.append({"seed": i, **exp})
        return out


class FitStage(_Stage):
    params: dict[str, Any] = Field(default_factory=dict, description="RuleIdentifier parameters.")
    learned_only: bool = Field(default=False, description="Fit on networks that learned their task only.")


class EvaluateStage(_Stage):
    enabled: bool = True
    splits: list[str] | None = Field(default=None, description="Split names (None: the headline splits and the grid).")
    options: dict[str, Any] = Field(default_factory=dict, description="More keyword arguments of rulefinder.classify.evaluate.evaluate.")


class RegisterStage(_Stage):
    enabled: bool = True
    name: str | None = Field(default=None, description="Model name (default: <config>-<short hash>).")


with warnings.catch_warnings():  # ``register`` (a stage) shadows BaseModel.register (abc); unused here
    warnings.filterwarnings("ignore", message='Field name "register"')

    class PipelineConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
        description: str = ""
        train: TrainStage
        features: FeaturesStage = Field(default_factory=FeaturesStage)
        fit: FitStage = Field(default_factory=FitStage)
        evaluate: EvaluateStage = Field(default_factory=EvaluateStage)
        register: RegisterStage = Field(default_factory=RegisterStage)
        source: str | None = Field(default=None, exclude=True)

        def zoo_spec(self) -> dict:
            """The zoo spec as a dict, overrides applied (what the train stage expands)."""
            from training_zoo.spec import load_spec

            zoo = self.train.zoo
            if isinstance(zoo, str) and self.source and not Path(zoo).is_absolute():
                near = Path(self.source).parent / zoo
                if near.exists():
                    zoo = str(near)
            try:
                spec = copy.deepcopy(load_spec(zoo))
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{self.source or self.name}: train.zoo: {exc}") from None
            spec.update(copy.deepcopy(self.train.overrides))
            return spec

        def fingerprint(self, stage: str | None = None) -> str:
            """Hash of the config (or of one stage's settings plus the zoo spec): names the model
            and tells a resumed stage whether its stored output was made with the same settings."""
            doc: dict[str, Any] = {"zoo": self.zoo_spec()}
            if stage is None:
                doc.update(self.model_dump(mode="json", exclude={"description"}))
            else:
                doc[stage] = getattr(self, stage).model_dump(mode="json", exclude={"budget_s", "shards_per_task"})
                if stage == "features":  # the rows are the estimator's transform: the parameters that shape them
                    doc["estimator_params"] = transform_params(self.fit.params)
            text = json.dumps(doc, sort_keys=True, default=str)
            return hashlib.sha256(text.encode()).hexdigest()

        def model_name(self) -> str:
            return self.register.name or f"{self.name}-{self.fingerprint()[:8]}"


def resolve_config(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such config file or shipped config (shipped: {known})")


def load_config(name_or_path: str | Path | dict) -> PipelineConfig:
    """A config from a shipped name (``smoke``, ``default``, ``large``), a YAML path or a dict."""
    if isinstance(name_or_path, dict):
        data, source = name_or_path, None
    else:
        path = resolve_config(name_or_path)
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        found = first.get("input")
        raise ConfigError(
            f"{source or 'config'}: field {field}: {first['msg']} (found {found!r})"
        ) from None
    return cfg
