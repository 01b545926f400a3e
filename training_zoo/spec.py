"""Zoo specifications: rules x optimizers x architectures x tasks x hyperparameters x seeds.

A spec (YAML, schema in docs/zoo.md) is expanded into :class:`Shard` s, each one population
(one rule, one optimizer, one architecture shape, one task, ``networks_per_shard`` networks)
that :func:`training_zoo.shard.run_shard` trains and records. Everything that is not the rule is varied so that a
classifier has to learn the rule, not the circumstances:

- per shard: architecture shape (depth, width, activation, channels), batch size, input
  scale, training length, checkpoint spacing;
- per network: learning rate (log-uniform over the optimizer's range), init scheme, init
  scale, init seed.

Expansion is deterministic for the spec's ``seed``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training_zoo.architectures import ARCH_FAMILIES
from training_zoo.dense import ACTIVATIONS, INITS
from training_zoo.optimizers import OPTIMIZERS
from training_zoo.rules.registry import all_rules, get_rule
from training_zoo.tasks import TASKS, parse_task_name
from training_zoo.trainer import SPACINGS

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).parent / "zoo_specs"


class SpecError(ValueError):
    """A zoo spec that cannot be expanded; the message names the field."""


@dataclass
class Shard:
    """One population to train: everything :func:`run_shard` needs, JSON-serialisable."""

    shard_id: str
    rule: str
    optimizer: str
    task: str
    arch: dict
    lrs: list[float]
    inits: list[str]
    init_scales: list[float]
    seeds: list[int]
    batch_size: int
    input_scale: float
    epochs: float
    checkpoints: int = 21
    spacing: str = "even"
    units_per_layer: int = 64
    probes: int = 64
    seed: int = 0
    rule_kwargs: dict = field(default_factory=dict)

    @property
    def n_networks(self) -> int:
        return len(self.lrs)

    def to_dict(self) -> dict:
        return asdict(self)


def load_spec(spec: str | Path | dict) -> dict:
    """A spec dict from a dict, a YAML path, or a built-in name (``smoke``, ``default``, ``large``)."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    if not path.exists():
        builtin = SPEC_DIR / f"{spec}.yaml"
        if not builtin.exists():
            known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
            raise SpecError(f"zoo spec {spec!r}: no such file and no built-in spec (built-in: {known})")
        path = builtin
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise SpecError(f"zoo spec {path}: expected a mapping at the top level")
    return data


def _list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _range(spec: dict, key: str, default) -> tuple[float, float]:
    v = spec.get(key, default)
    v = _list(v)
    if len(v) == 1:
        v = [v[0], v[0]]
    if len(v) != 2 or not all(isinstance(x, (int, float)) for x in v) or v[0] > v[1]:
        raise SpecError(f"hyperparameters.{key}: expected [low, high] numbers, found {v!r}")
    return float(v[0]), float(v[1])


def _check(values, known, field_name):
    for v in values:
        if v not in known:
            raise SpecError(f"{field_name}: unknown value {v!r}; known: {', '.join(known)}")


def expand_spec(spec: str | Path | dict) -> list[Shard]:
    """Expand a zoo spec into shards (see docs/zoo.md for the schema)."""
    spec = load_spec(spec)
    seed = int(spec.get("seed", 0))
    rules = spec.get("rules", "all")
    rules = list(all_rules()) if rules == "all" else _list(rules)
    for r in rules:
        try:
            get_rule(r)
        except KeyError as err:
            raise SpecError(f"rules: {err.args[0]}") from None
    optimizers = _list(spec.get("optimizers", ["sgd"]))
    _check(optimizers, OPTIMIZERS, "optimizers")
    tasks = _list(spec.get("tasks", ["digits"]))
    for t in tasks:
        base, _ = parse_task_name(str(t))
        _check([base], TASKS, "tasks")
    archs = spec.get("architectures") or [{"family": "mlp"}]
    for a in archs:
        _check([a.get("family", "mlp")], ARCH_FAMILIES, "architectures.family")
        _check(_list(a.get("activation", "relu")), ACTIVATIONS, "architectures.activation")
    hp = spec.get("hyperparameters", {}) or {}
    lr_ranges = hp.get("lr", {"sgd": [0.005, 0.5], "momentum": [0.0005, 0.05], "adam": [0.0001, 0.01]})
    for o in optimizers:
        if o not in lr_ranges:
            raise SpecError(f"hyperparameters.lr: no range for optimizer {o!r}")
        _range(lr_ranges, o, None)
    inits = _list(hp.get("init", list(INITS)))
    _check(inits, INITS, "hyperparameters.init")
    init_scale = _range(hp, "init_scale", [1.0, 1.0])
    batch_sizes = [int(b) for b in _list(hp.get("batch_size", [32]))]
    input_scale = _range(hp, "input_scale", [1.0, 1.0])
    epochs = _range(hp, "epochs", [2, 2])
    rule_lr_scale = spec.get("rule_lr_scale", {}) or {}
    rec = spec.get("recording", {}) or {}
    spacings = _list(rec.get("spacing", ["even"]))
    _check(spacings, SPACINGS, "recording.spacing")
    n_ck = int(rec.get("checkpoints", 21))
    units = int(rec.get("units_per_layer", 64))
    probes = int(rec.get("probes", 64))
    per_cell = int(spec.get("shards_per_cell", 1))
    n_net = int(spec.get("networks_per_shard", 8))
    rule_kwargs = spec.get("rule_kwargs", {}) or {}

    shards: list[Shard] = []
    for ri, rule in enumerate(rules):
        supports = get_rule(rule).supports
        for oi, opt in enumerate(optimizers):
            lo, hi = _range(lr_ranges, opt, None)
            scale = float(rule_lr_scale.get(rule, 1.0))
            for ti, task in enumerate(tasks):
                for ai, arch in enumerate(archs):
                    family = arch.get("family", "mlp")
                    if family not in supports:
                        log.debug("zoo spec: rule %s does not support %s; skipped", rule, family)
                        continue
                    for rep in range(per_cell):
                        rng = np.random.default_rng([seed, ri, oi, ti, ai, rep])
                        shape = {"family": family,
                                 "activation": str(rng.choice(_list(arch.get("activation", "relu"))))}
                        if family == "cnn":
                            options = arch.get("channels", [[8, 16]])
                            if options and isinstance(options[0], int):  # one choice, written flat
                                options = [options]
                            shape["channels"] = [int(c) for c in options[rng.integers(len(options))]]
                        else:
                            shape["depth"] = int(rng.choice(_list(arch.get("depth", 2))))
                            shape["width"] = int(rng.choice(_list(arch.get("width", 64))))
                        shards.append(Shard(
                            shard_id=f"{rule}.{opt}.{task}.a{ai}.r{rep}",
                            rule=rule, optimizer=opt, task=str(task), arch=shape,
                            lrs=[float(v) * scale for v in np.exp(rng.uniform(math.log(lo), math.log(hi), n_net))],
                            inits=[str(v) for v in rng.choice(inits, n_net)],
                            init_scales=[float(v) for v in rng.uniform(*init_scale, n_net)],
                            seeds=[int(v) for v in rng.integers(0, 2**31 - 1, n_net)],
                            batch_size=int(rng.choice(batch_sizes)),
                            input_scale=float(np.exp(rng.uniform(math.log(input_scale[0]), math.log(input_scale[1])))),
                            epochs=float(rng.uniform(*epochs)),
                            checkpoints=n_ck, spacing=str(rng.choice(spacings)),
                            units_per_layer=units, probes=probes,
                            seed=int(rng.integers(0, 2**31 - 1)),
                            rule_kwargs=dict(rule_kwargs.get(rule, {})),
                        ))
    log.info("zoo spec %s: %d shards, %d networks", spec.get("name", "?"), len(shards),
             sum(s.n_networks for s in shards))
    return shards


def __getattr__(name: str):
    # Running a shard lives apart from parsing (DESIGN.md: training_zoo.shard); the old
    # import path keeps working. Lazy, because training_zoo.shard imports Shard from here.
    if name == "run_shard":
        from training_zoo.shard import run_shard

        return run_shard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
