"""Zoo specifications: rules x optimizers x architectures x tasks x hyperparameters x seeds.

A spec (YAML, schema in docs/zoo.md) is expanded into :class:`Shard` s, each one population
(one rule, one optimizer, one architecture shape, one task, ``networks_per_shard`` networks)
that :func:`training_zoo.shard.run_shard` trains and records. Everything that is not the rule is varied so that a
classifier has to learn the rule, not the circumstances:

- per shard: architecture shape (depth, width, activation, channels), batch size, input
  scale, training length, checkpoint spacing;
- per network: learning rate (log-uniform over the optimizer's range, times the rule's
  ``rule_lr_scale``, or placed at the same quantile of the rule's own window,
  ``hyperparameters.rule_lr``; then times the task's ``hyperparameters.task_lr_scale``),
  init scheme, init scale, init seed;
- per rule: the implementation variant (``variants``), crossed with the cells.

All of these but the rule's own scales or windows and its variant are drawn per *cell* (optimizer, task,
architecture entry, replicate), never per rule, so no circumstance tells a rule apart.
Expansion is deterministic for the spec's ``seed``.
"""

from __future__ import annotations

import logging
import math
import zlib
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
    #: implementation variant (``LearningRule.variants``); the rule is built with
    #: ``rule_cls.from_variant(variant, **rule_kwargs)``.
    variant: str = "default"

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


def _range(spec: dict, key: str, default, field_name: str | None = None) -> tuple[float, float]:
    v = spec.get(key, default)
    v = _list(v)
    if len(v) == 1:
        v = [v[0], v[0]]
    if len(v) != 2 or not all(isinstance(x, (int, float)) for x in v) or v[0] > v[1]:
        raise SpecError(f"{field_name or 'hyperparameters.' + key}: expected [low, high] numbers, found {v!r}")
    return float(v[0]), float(v[1])


def _check(values, known, field_name):
    for v in values:
        if v not in known:
            raise SpecError(f"{field_name}: unknown value {v!r}; known: {', '.join(known)}")


def _rule_variants(spec: dict, rules: list[str]) -> dict[str, list[str]]:
    """rule -> the variant ids the spec asks for (``variants: all | default | {rule: ...}``);
    a spec that does not say gets the paper form only (the shipped default/large say ``all``)."""
    raw = spec.get("variants", "default")
    per_rule = raw if isinstance(raw, dict) else {}
    if not isinstance(raw, dict) and raw not in ("all", "default"):
        raise SpecError(f"variants: expected 'all', 'default' or a mapping rule -> list, found {raw!r}")
    for r in per_rule:
        if r not in rules:
            raise SpecError(f"variants: rule {r!r} is not among the spec's rules ({', '.join(rules)})")
    out = {}
    for r in rules:
        known = list(get_rule(r).variants)
        want = per_rule.get(r, "all") if per_rule else raw
        want = known if want == "all" else ["default"] if want == "default" else _list(want)
        for v in want:
            if v not in known:
                raise SpecError(f"variants.{r}: unknown variant {v!r}; known: {', '.join(known)}")
        out[r] = list(dict.fromkeys(want))
    return out


def _rule_scale(table: dict, rule: str, opt: str, field_name: str) -> float:
    """A per-rule factor, either one number or a mapping optimizer -> number (missing: 1)."""
    v = table.get(rule, 1.0)
    if isinstance(v, dict):
        v = v.get(opt, 1.0)
    if not isinstance(v, (int, float)) or v <= 0:
        raise SpecError(f"{field_name}.{rule}: expected a positive number (or optimizer -> number), found {v!r}")
    return float(v)


def _rule_windows(table, rules: list[str], rule_lr_scale: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(rule, optimizer) -> [low, high] from ``hyperparameters.rule_lr: {rule: {optimizer: [low, high]}}``."""
    if not isinstance(table, dict):
        raise SpecError(f"hyperparameters.rule_lr: expected a mapping rule -> {{optimizer: [low, high]}}, found {table!r}")
    out = {}
    for r, per in table.items():
        if r not in rules and r not in all_rules():
            raise SpecError(f"hyperparameters.rule_lr: unknown rule {r!r}")
        if not isinstance(per, dict):
            raise SpecError(f"hyperparameters.rule_lr.{r}: expected a mapping optimizer -> [low, high], found {per!r}")
        for o, v in per.items():
            # optimizers the spec does not train are allowed: a pipeline config may narrow them
            _check([o], OPTIMIZERS, f"hyperparameters.rule_lr.{r}")
            v = _list(v)
            if len(v) != 2 or not all(isinstance(x, (int, float)) and x > 0 for x in v) or v[0] > v[1]:
                raise SpecError(f"hyperparameters.rule_lr.{r}.{o}: expected [low, high], positive numbers, low <= high, "
                                f"found {v!r}")
            scale = rule_lr_scale.get(r, {})
            if not isinstance(scale, dict) or o in scale:
                # both would move the same draws: which one meant what is not for the expander to guess
                raise SpecError(f"hyperparameters.rule_lr.{r}.{o}: rule_lr_scale also sets {r}'s {o} learning rates; "
                                "give one of the two")
            out[(r, o)] = (float(v[0]), float(v[1]))
    return out


def _task_scales(table, tasks: list) -> dict[tuple[str, str], float]:
    """(task, optimizer) -> factor from ``hyperparameters.task_lr_scale: {task: factor | {optimizer: factor}}``:
    a task whose networks of every rule learn best lower (or higher) in their windows moves them all."""
    if not isinstance(table, dict):
        raise SpecError(f"hyperparameters.task_lr_scale: expected a mapping task -> factor or "
                        f"{{optimizer: factor}}, found {table!r}")
    out = {}
    for t, v in table.items():
        # a task the spec does not train is allowed (a pipeline config may narrow the tasks), a typo is not
        if t not in map(str, tasks) and parse_task_name(str(t))[0] not in TASKS:
            raise SpecError(f"hyperparameters.task_lr_scale: {t!r} is not a task (tasks: {', '.join(map(str, tasks))})")
        per = v if isinstance(v, dict) else {o: v for o in OPTIMIZERS}
        for o, x in per.items():
            _check([o], OPTIMIZERS, f"hyperparameters.task_lr_scale.{t}")
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0:
                raise SpecError(f"hyperparameters.task_lr_scale.{t}.{o}: expected a positive number, found {x!r}")
            out[(str(t), o)] = float(x)
    return out


def _in_window(lrs: list[float], lo: float, hi: float, window: tuple[float, float]) -> list[float]:
    """The cell's learning rates moved to ``window`` at the same log-quantile of the cell's range
    ``[lo, hi]``: every rule's i-th network sits equally high in its own window."""
    wlo, whi = math.log(window[0]), math.log(window[1])
    span = math.log(hi) - math.log(lo)
    return [math.exp(wlo + ((math.log(v) - math.log(lo)) / span if span > 0 else 0.5) * (whi - wlo)) for v in lrs]


def _draw_cell(rng: np.random.Generator, arch: dict, family: str, n_net: int, lo: float, hi: float,
               inits, init_scale, batch_sizes, input_scale, epochs, spacings) -> dict:
    """Everything a cell fixes, drawn from the cell's generator alone (never the rule's)."""
    shape = {"family": family, "activation": str(rng.choice(_list(arch.get("activation", "relu"))))}
    if family == "cnn":
        options = arch.get("channels", [[8, 16]])
        if options and isinstance(options[0], int):  # one choice, written flat
            options = [options]
        shape["channels"] = [int(c) for c in options[rng.integers(len(options))]]
    else:
        shape["depth"] = int(rng.choice(_list(arch.get("depth", 2))))
        shape["width"] = int(rng.choice(_list(arch.get("width", 64))))
    return {
        "arch": shape,
        "lrs": [float(v) for v in np.exp(rng.uniform(math.log(lo), math.log(hi), n_net))],
        "inits": [str(v) for v in rng.choice(inits, n_net)],
        "init_scales": [float(v) for v in rng.uniform(*init_scale, n_net)],
        "seeds": [int(v) for v in rng.integers(0, 2**31 - 1, n_net)],
        "batch_size": int(rng.choice(batch_sizes)),
        "input_scale": float(np.exp(rng.uniform(math.log(input_scale[0]), math.log(input_scale[1])))),
        "epochs": float(rng.uniform(*epochs)),
        "spacing": str(rng.choice(spacings)),
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


def expand_spec(spec: str | Path | dict) -> list[Shard]:
    """Expand a zoo spec into shards (see docs/zoo.md for the schema).

    A *cell* is (optimizer, task, architecture entry, replicate). Everything a shard varies
    besides the rule (shape, batch size, input scale, training length, checkpoint spacing, the
    networks' learning rates before the rule's scale, inits and seeds, the shard's seed) is
    drawn from the spec seed and the cell's indices alone, so every rule meets exactly the same
    circumstances in a cell. Variants are crossed with cells: with ``variant_sampling: cycle``
    (default) a rule's cells of one architecture family take its variants in turn (and a family
    with fewer cells than variants repeats cells until every variant has one), with ``cross``
    every cell runs every variant.
    """
    spec = load_spec(spec)
    seed = int(spec.get("seed", 0))
    rules = spec.get("rules", "all")
    rules = list(all_rules()) if rules == "all" else _list(rules)
    for r in rules:
        try:
            get_rule(r)
        except KeyError as err:
            raise SpecError(f"rules: {err.args[0]}") from None
    variants = _rule_variants(spec, rules)
    sampling = spec.get("variant_sampling", "cycle")
    _check([sampling], ("cycle", "cross"), "variant_sampling")
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
        _range(lr_ranges, o, None, f"hyperparameters.lr.{o}")
    inits = _list(hp.get("init", list(INITS)))
    _check(inits, INITS, "hyperparameters.init")
    init_scale = _range(hp, "init_scale", [1.0, 1.0])
    batch_sizes = [int(b) for b in _list(hp.get("batch_size", [32]))]
    input_scale = _range(hp, "input_scale", [1.0, 1.0])
    epochs_spec = hp.get("epochs", [2, 2])
    task_epochs = epochs_spec if isinstance(epochs_spec, dict) else {}
    for t in task_epochs:
        # a task the spec does not train is allowed (a pipeline config may narrow the tasks), a typo is not
        if t != "default" and (t not in tasks and parse_task_name(str(t))[0] not in TASKS):
            raise SpecError(f"hyperparameters.epochs: {t!r} is neither a task nor 'default' "
                            f"(tasks: {', '.join(map(str, tasks))})")
        _range(task_epochs, t, None, f"hyperparameters.epochs.{t}")
    for t in tasks if task_epochs else []:
        if str(t) not in task_epochs and "default" not in task_epochs:
            raise SpecError(f"hyperparameters.epochs: no range for task {t!r} and no 'default'")
    task_lr_scale = _task_scales(hp.get("task_lr_scale", {}) or {}, tasks)
    rule_lr_scale = spec.get("rule_lr_scale", {}) or {}
    rule_epochs_scale = spec.get("rule_epochs_scale", {}) or {}
    rule_lr_window = _rule_windows(hp.get("rule_lr", {}) or {}, rules, rule_lr_scale)
    for name, table in (("rule_lr_scale", rule_lr_scale), ("rule_epochs_scale", rule_epochs_scale)):
        for r in table:
            if r not in rules and r not in all_rules():
                raise SpecError(f"{name}: unknown rule {r!r}")
            for o in optimizers:
                _rule_scale(table, r, o, name)
    rec = spec.get("recording", {}) or {}
    spacings = _list(rec.get("spacing", ["even"]))
    _check(spacings, SPACINGS, "recording.spacing")
    n_ck = int(rec.get("checkpoints", 21))
    units = int(rec.get("units_per_layer", 64))
    probes = int(rec.get("probes", 64))
    per_cell = int(spec.get("shards_per_cell", 1))
    n_net = int(spec.get("networks_per_shard", 8))
    rule_kwargs = spec.get("rule_kwargs", {}) or {}

    # The cells, and what each fixes, drawn once for all rules.
    cells: dict[str, list[tuple[tuple, dict]]] = {}  # architecture family -> [(key, draws)]
    for ai, arch in enumerate(archs):
        family = arch.get("family", "mlp")
        for oi, opt in enumerate(optimizers):
            lo, hi = _range(lr_ranges, opt, None)
            for ti, task in enumerate(tasks):
                ep = (_range(task_epochs, str(task) if str(task) in task_epochs else "default", None)
                      if task_epochs else _range(hp, "epochs", [2, 2]))
                for rep in range(per_cell):
                    rng = np.random.default_rng([seed, oi, ti, ai, rep])
                    draws = _draw_cell(rng, arch, family, n_net, lo, hi, inits, init_scale,
                                       batch_sizes, input_scale, ep, spacings)
                    cells.setdefault(family, []).append(((opt, str(task), ai, rep), draws))

    shards: list[Shard] = []
    for rule in rules:
        supports = get_rule(rule).supports
        rv = variants[rule]
        for family, fcells in cells.items():
            if family not in supports:
                log.debug("zoo spec: rule %s does not support %s; skipped", rule, family)
                continue
            if sampling == "cross":
                plan = [(c, v) for c in fcells for v in rv]
            else:
                # cycle: the cells in an order shuffled per rule and family take the variants
                # in turn (balanced counts, and no variant tied to one optimizer or task, as a
                # fixed order would do when the counts divide); cells repeat until every
                # variant has one.
                order = np.random.default_rng([seed, zlib.crc32(f"{rule}/{family}".encode())]).permutation(len(fcells))
                plan = [(fcells[order[k % len(fcells)]], rv[k % len(rv)])
                        for k in range(max(len(fcells), len(rv)))]
            for ((opt, task, ai, rep), d), variant in plan:
                lr_scale = _rule_scale(rule_lr_scale, rule, opt, "rule_lr_scale")
                lrs = [v * lr_scale for v in d["lrs"]]
                if (rule, opt) in rule_lr_window:
                    lrs = _in_window(d["lrs"], *_range(lr_ranges, opt, None), rule_lr_window[(rule, opt)])
                # after the rule's window: the task moves every rule's draws alike (no confound)
                lrs = [v * task_lr_scale.get((task, opt), 1.0) for v in lrs]
                ep_scale = _rule_scale(rule_epochs_scale, rule, opt, "rule_epochs_scale")
                shards.append(Shard(
                    # A spec seed other than 0 names its shards apart, so zoos expanded from
                    # several seeds can grow one store without two shards sharing an id.
                    shard_id=f"{rule}.{variant}.{opt}.{task}.a{ai}.r{rep}" + (f".s{seed}" if seed else ""),
                    rule=rule, variant=variant, optimizer=opt, task=task, arch=dict(d["arch"]),
                    lrs=lrs, inits=list(d["inits"]),
                    init_scales=list(d["init_scales"]), seeds=list(d["seeds"]),
                    batch_size=d["batch_size"], input_scale=d["input_scale"],
                    epochs=d["epochs"] * ep_scale, checkpoints=n_ck, spacing=d["spacing"],
                    units_per_layer=units, probes=probes, seed=d["seed"],
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
