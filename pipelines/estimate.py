"""``--dry-run``: networks, shards and an estimate of compute and wall time; runs nothing.

The cost model is deliberately simple and calibrated on this project's measurements (see
docs/pipeline.md, "Estimates"): a shard's training time is

    shard_overhead + steps x (step_overhead + M x batch x flops_per_example / flop_rate) x rule_factor

with ``steps = max(epochs x n_train / batch, checkpoints - 1)``, the per-example FLOPs of the
architecture (6 per weight: forward, backward, update), one step's fixed overhead (tensor
dispatch on small populations), and a per-rule factor for the rules that iterate many small
steps per update (EqProp's and PC's relaxations, measured 11-14x backprop's time in
docs/performance.md). Features and fit are estimated per recording. A GPU is taken as
``GPU_SPEEDUP`` times one core, an assumption to be replaced by the CUDA measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.config import PipelineConfig

# Calibrated on the 2-core development machine (docs/pipeline.md "Estimates"); one CPU core.
STEP_OVERHEAD_S = 1.2e-3
SHARD_OVERHEAD_S = 1.0  # task load, recorder set-up, store write
FLOP_RATE = 8e9
RULE_FACTOR = {
    "equilibrium_propagation": 13.5, "predictive_coding": 11.3, "hebbian": 2.4, "krotov_hopfield": 2.4,
    "forward_forward": 2.2, "difference_target_propagation": 1.8, "node_perturbation": 1.5,
}
FEATURE_S_PER_RECORDING = 0.06     # the features stage per recording on one core (read, virtual, rows, write)
FIT_S_PER_RECORDING = 0.02           # hgb fit with its 4-fold calibration pass, per recording
EVALUATE_FACTOR = 6.0                # headline splits: a few refits, each like the fit
RAY_START_S = 30.0                   # a local Ray on 2 busy cores
GPU_SPEEDUP = 20.0                   # the target for a GPU over 2 cores; unmeasured here
TASK_SHAPES = {  # (n_train, n_features): training_zoo.tasks, measured once
    "digits": (1437, 64), "mnist5k": (4000, 784), "mnist5k_14": (4000, 196), "mnist1d": (4000, 40),
    "synthetic": (4000, 32),
}


@dataclass
class Estimate:
    networks: int
    shards: int
    recordings: int
    train_cpu_s: float
    features_cpu_s: float
    fit_s: float
    evaluate_s: float
    cluster: dict
    workers: float
    wall_s: float
    per_rule_cpu_s: dict

    def as_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _flops_per_example(arch: dict, n_in: int, side: int, n_classes: int = 10) -> float:
    if arch["family"] == "cnn":
        flops, c_in, hw = 0.0, 1, side * side
        for c in arch.get("channels", [8, 16]):
            flops += hw * c_in * c * 9
            c_in, hw = c, max(hw // 4, 1)
        return 2 * (flops + c_in * hw * n_classes)
    width, depth = int(arch.get("width", 64)), int(arch.get("depth", 2))
    sizes = [n_in] + [width] * depth + [n_classes]
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def shard_seconds(shard) -> float:
    base = shard.task.split("@")[0]
    n_train, n_in = TASK_SHAPES.get(base, (4000, 100))
    side = int(round(math.sqrt(n_in))) if base != "mnist1d" else n_in
    steps = max(shard.epochs * n_train / shard.batch_size, shard.checkpoints - 1)
    per_step = STEP_OVERHEAD_S + 3 * shard.n_networks * shard.batch_size * _flops_per_example(
        shard.arch, n_in, side) / FLOP_RATE
    return SHARD_OVERHEAD_S + steps * per_step * RULE_FACTOR.get(shard.rule, 1.0)


def estimate(config: PipelineConfig, cluster: dict | None = None) -> Estimate:
    """Estimate ``config`` on ``cluster`` (``{"cpus", "gpus", "nodes"}``; default: this machine)."""
    import os

    from training_zoo.spec import expand_spec

    shards = expand_spec(config.zoo_spec())
    cluster = cluster or {"cpus": float(os.cpu_count() or 1), "gpus": 0.0, "nodes": 1}
    per_rule: dict[str, float] = {}
    train = 0.0
    for s in shards:
        t = shard_seconds(s)
        train += t
        per_rule[s.rule] = per_rule.get(s.rule, 0.0) + t
    networks = sum(s.n_networks for s in shards)
    fcfg = config.features
    recordings = networks * (int(fcfg.include_recorded) + len(fcfg.virtual) * fcfg.n_draws)
    features = recordings * FEATURE_S_PER_RECORDING
    fit = recordings * FIT_S_PER_RECORDING
    evaluate = fit * EVALUATE_FACTOR if config.evaluate.enabled else 0.0
    cpus = max(cluster.get("cpus", 1.0), 1.0)
    gpus = cluster.get("gpus", 0.0)
    if gpus > 0:
        # One GPU taken as GPU_SPEEDUP times this 2-core machine, shared by 1/gpus_per_task tasks.
        workers = gpus / config.train.gpus_per_task
        longest = max((shard_seconds(s) for s in shards), default=0.0) / (2 * GPU_SPEEDUP)
        train_wall = max(train / (gpus * 2 * GPU_SPEEDUP), longest)
    else:
        workers = cpus / config.train.cpus_per_task
        # A shard cannot be split: the longest one bounds the stage.
        longest = max((shard_seconds(s) for s in shards), default=0.0)
        train_wall = max(train / workers, longest)
    wall = RAY_START_S + train_wall + features / cpus + fit + evaluate
    return Estimate(
        networks=networks, shards=len(shards), recordings=recordings, train_cpu_s=train,
        features_cpu_s=features, fit_s=fit, evaluate_s=evaluate, cluster=dict(cluster),
        workers=workers, wall_s=wall, per_rule_cpu_s={k: round(v, 1) for k, v in sorted(per_rule.items())},
    )


def format_estimate(config: PipelineConfig, est: Estimate) -> str:
    c = est.cluster
    hours = est.wall_s / 3600
    lines = [
        f"dry run of {config.name}: {est.networks} networks in {est.shards} shards, "
        f"{est.recordings} recordings for the classifier",
        f"cluster seen: {c.get('nodes', 1)} node(s), {c.get('cpus', 0):g} CPUs, {c.get('gpus', 0):g} GPUs "
        f"({est.workers:g} training tasks at a time)",
        f"compute: train {est.train_cpu_s / 3600:.2f} core-h, features {est.features_cpu_s / 3600:.2f} core-h, "
        f"fit {est.fit_s / 60:.1f} min, evaluate {est.evaluate_s / 60:.1f} min",
        f"estimated wall time: {est.wall_s / 60:.1f} min ({hours:.2f} h); nothing was run",
    ]
    budget = sum(getattr(config, s).budget_s for s in ("train", "features", "fit", "evaluate", "register"))
    if est.wall_s > budget:
        lines.append(f"warning: the estimate exceeds the config's summed stage budgets ({budget / 60:.0f} min)")
    return "\n".join(lines)
