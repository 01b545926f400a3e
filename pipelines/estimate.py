"""``--dry-run``: networks, shards and an estimate of compute and wall time; runs nothing.

The cost model is deliberately simple and calibrated on this project's measurements (see
docs/pipeline.md, "Estimates"): a shard's training time is

    shard_overhead + steps x (step_overhead + M x batch x flops_per_example / flop_rate) x rule_factor

with ``steps = max(epochs x n_train / batch, checkpoints - 1)``, the per-example FLOPs of the
architecture (6 per weight: forward, backward, update), one step's fixed overhead (tensor
dispatch on small populations), and a per-rule factor for the rules that iterate many small
steps per update (EqProp's and PC's relaxations, measured 11-14x backprop's time in
docs/performance.md). Features and fit are estimated per recording. The evaluation counts
its fold fits (:func:`evaluate_fits`: each a fraction of the fit's recordings, the
balanced-accuracy-only splits without the calibration pass), which run in parallel on the
driver's cores, plus the grid's and the controls' recordings. A GPU is taken as
``GPU_SPEEDUP`` times one core, an assumption to be replaced by the CUDA measurement.
"""

from __future__ import annotations

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
#: A fit with its 4-fold calibration pass, CPU seconds per training recording (1,652 recordings
#: of the default zoo, 967 features per area: logreg 65.8 s; hgb from an earlier zoo).
FIT_S_PER_RECORDING = {"logreg": 0.04, "hgb": 0.02}
UNCALIBRATED_FRACTION = 0.29         # a fit without the calibration pass, of a calibrated one (18.8 / 65.8 s)
EVAL_S_PER_VIEW = 0.04               # one grid / control recording: read, virtual experiment, rows, predict
RAY_START_S = 30.0                   # a local Ray on 2 busy cores
GPU_SPEEDUP = 20.0                   # the target for a GPU over 2 cores; unmeasured here
TASK_SHAPES = {  # (n_train, input (channels, height, width)): training_zoo.tasks
    "digits": (1437, (1, 8, 8)), "mnist5k": (4000, (1, 28, 28)), "mnist5k_14": (4000, (1, 14, 14)),
    "mnist1d": (4000, (1, 1, 40)), "synthetic": (4000, (1, 1, 32)),
}


def evaluate_fits(config: PipelineConfig, shards: list) -> float:
    """The evaluation's fold fits in units of the whole fit (same recordings, calibrated)."""
    from rulefinder.classify.evaluate import HEADLINE_SPLITS, LORO_HYPERPARAMETERS
    from training_zoo.rules import catalogue

    cfg = config.evaluate
    if not cfg.enabled:
        return 0.0
    splits = set(cfg.splits if cfg.splits is not None else [*HEADLINE_SPLITS, "grid"])
    family = {e["id"]: e["family"] for e in catalogue()}

    def held_out(values) -> float:
        # k folds of one value each train on the rest: k - 1 fits' worth of recordings
        return max(len(set(values)) - 1, 0)

    archs = held_out(s.arch.get("family", "mlp") for s in shards)
    units = 0.0
    if splits & {"lofo_arch", "controls", "grid", "performance_matched"}:
        units += archs
    if "lofo_task" in splits:
        units += held_out(s.task for s in shards) * UNCALIBRATED_FRACTION
    if "lovo_variant" in splits:
        per_rule = max((sum(1 for x in shards if x.rule == r and x.variant == v) and 1 for r, v in
                        {(x.rule, x.variant) for x in shards}), default=0)
        units += per_rule * UNCALIBRATED_FRACTION * 2  # about as many folds as variants per rule
    if "loro" in splits:
        units += len(LORO_HYPERPARAMETERS) * 2 * UNCALIBRATED_FRACTION  # three range bins each
    if "lofo_family" in splits:
        units += held_out(family.get(s.rule, s.rule) for s in shards) / 2  # half of the others
    if "grid" in splits and cfg.options.get("augment", 1) and not config.features.include_recorded:
        units += archs * 2 * UNCALIBRATED_FRACTION  # the augmented refit, twice the recordings
    return units


def evaluate_views(config: PipelineConfig, networks: int) -> int:
    """Recordings the evaluation featurises besides the stored rows: grid and controls."""
    from rulefinder.classify.evaluate import GRID_NOISE, GRID_SESSIONS, GRID_UNITS, HEADLINE_SPLITS

    cfg = config.evaluate
    if not cfg.enabled:
        return 0
    splits = set(cfg.splits if cfg.splits is not None else [*HEADLINE_SPLITS, "grid"])
    views = 0
    if "grid" in splits:
        units, sessions, noise = cfg.options.get("grid", (GRID_UNITS, GRID_SESSIONS, GRID_NOISE))
        views += min(int(cfg.options.get("grid_networks", 60)), networks) * len(units) * len(sessions) * len(noise)
    if "controls" in splits:
        views += 2 * min(int(cfg.options.get("control_networks", 20)), networks)
    return views


@dataclass
class Estimate:
    networks: int
    shards: int
    recordings: int
    train_cpu_s: float
    features_cpu_s: float
    fit_s: float
    evaluate_s: float
    evaluate_cpu_s: float
    cluster: dict
    workers: float
    wall_s: float
    per_rule_cpu_s: dict

    def as_dict(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _flops_per_example(arch: dict, shape: tuple[int, int, int], n_classes: int = 10) -> float:
    """Multiply-adds x 2 of one forward pass: 3x3 stride-2 convolutions (training_zoo's
    ``PopulationCNN``; a 1-D task is a 1 x L image) and a dense readout, or the MLP's layers."""
    c_in, h, w = shape
    if arch["family"] == "cnn":
        flops = 0.0
        for c in arch.get("channels", [8, 16]):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # the output of a 3x3, stride 2, padding 1 layer
            flops += h * w * c_in * c * 9
            c_in = c
        return 2 * (flops + c_in * h * w * n_classes)
    width, depth = int(arch.get("width", 64)), int(arch.get("depth", 2))
    sizes = [c_in * h * w] + [width] * depth + [n_classes]
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def shard_seconds(shard) -> float:
    base = shard.task.split("@")[0]
    n_train, shape = TASK_SHAPES.get(base, (4000, (1, 1, 100)))
    steps = max(shard.epochs * n_train / shard.batch_size, shard.checkpoints - 1)
    per_step = STEP_OVERHEAD_S + 3 * shard.n_networks * shard.batch_size * _flops_per_example(
        shard.arch, shape) / FLOP_RATE
    return SHARD_OVERHEAD_S + steps * per_step * RULE_FACTOR.get(shard.rule, 1.0)


def estimate(config: PipelineConfig, cluster: dict | None = None, driver_cpus: int | None = None) -> Estimate:
    """Estimate ``config`` on ``cluster`` (``{"cpus", "gpus", "nodes"}``; default: this
    machine), with the fit and evaluation on a driver of ``driver_cpus`` cores (default: this
    machine's)."""
    import os

    from rulefinder.classify.estimator import RuleIdentifier

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
    classifier = RuleIdentifier(**config.fit.params).classifier
    fit = recordings * FIT_S_PER_RECORDING.get(classifier, max(FIT_S_PER_RECORDING.values()))
    driver = max(int(driver_cpus or os.cpu_count() or 1), 1)
    eval_fits = fit * evaluate_fits(config, shards)
    eval_views = evaluate_views(config, networks) * EVAL_S_PER_VIEW
    evaluate_cpu = eval_fits + eval_views
    # The fold fits spread over the driver's cores (a handful of fits: at best one each).
    evaluate = eval_fits / driver + eval_views if config.evaluate.enabled else 0.0
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
        features_cpu_s=features, fit_s=fit, evaluate_s=evaluate, evaluate_cpu_s=evaluate_cpu, cluster=dict(cluster),
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
        f"fit {est.fit_s / 60:.1f} min, evaluate {est.evaluate_s / 60:.1f} min "
        f"({est.evaluate_cpu_s / 60:.1f} CPU-min)",
        f"estimated wall time: {est.wall_s / 60:.1f} min ({hours:.2f} h); nothing was run",
    ]
    budget = sum(getattr(config, s).budget_s for s in ("train", "features", "fit", "evaluate", "register"))
    if est.wall_s > budget:
        lines.append(f"warning: the estimate exceeds the config's summed stage budgets ({budget / 60:.0f} min)")
    return "\n".join(lines)
