"""Running one zoo shard: build the population, train it with its rule, record it.

Parsing and expanding specs lives in :mod:`training_zoo.spec`; this module only executes a
:class:`~training_zoo.spec.Shard` (a worker, a Ray task or :mod:`training_zoo.local_run`).
"""

from __future__ import annotations

import logging
import math

from training_zoo.architectures import build_network, describe, reinitialise
from training_zoo.recorder import Recorder
from training_zoo.rules.registry import get_rule
from training_zoo.spec import Shard
from training_zoo.tasks import load_task
from training_zoo.trainer import checkpoint_steps, train_population

log = logging.getLogger(__name__)

# Checkpoints before the last measure test accuracy on a fixed subset of this many test
# examples (the last checkpoint, the final accuracy and ``learned`` use the whole test set):
# evaluating the whole test set at all 21 checkpoints cost more than training on the default
# spec's short shards (Forward-Forward scores every label; EqProp relaxes). Recorded in each
# network's hyperparameters as ``checkpoint_eval_examples``.
CHECKPOINT_EVAL_EXAMPLES = 256


def _setup(shard: Shard, device: str, rule=None):
    """The shard's rule, task, population and step plan (shared by run and reference runs)."""
    rule_cls = get_rule(shard.rule)
    if rule is None:
        rule = rule_cls.from_variant(shard.variant, **shard.rule_kwargs)
    task = load_task(shard.task, n_probe=shard.probes, input_scale=shard.input_scale)
    m = shard.n_networks
    net = build_network(shard.arch, task.input_shape, task.n_classes, m, device=device)
    reinitialise(net, shard.inits, shard.init_scales, shard.seeds)
    per_epoch = len(task.y_train) // min(shard.batch_size, len(task.y_train))
    total = max(int(math.ceil(shard.epochs * per_epoch)), shard.checkpoints - 1)
    return rule_cls, rule, task, net, per_epoch, total


def train_shard(shard: Shard | dict, device: str = "cpu", rule=None) -> dict:
    """Train a shard's population without recording it (reference sweeps): the trainer's
    result dict (``test_accuracy``, ``diverged``, ...). ``rule`` replaces the shard's rule
    (e.g. :class:`training_zoo.baselines.ReadoutOnly` under the same draws)."""
    import torch

    if isinstance(shard, dict):
        shard = Shard(**shard)
    _, rule, task, net, per_epoch, total = _setup(shard, device, rule)
    return train_population(rule, net, task, shard.optimizer, lr=torch.tensor(shard.lrs),
                            epochs=total / per_epoch + 1, batch_size=shard.batch_size,
                            seed=shard.seed, max_steps=total)


def run_shard(shard: Shard | dict, device: str = "cpu", progress: bool = False) -> list:
    """Train and record one shard; returns one NetworkRecord per network.

    Diverged networks are returned with ``diverged=True`` (frozen at their last good
    checkpoint, see :mod:`training_zoo.trainer`) and logged; the store keeps them out of
    training sets. Every network's metadata carries its ``variant`` and whether it ``learned``
    (:func:`training_zoo.baselines.learned`: final test accuracy at or above the learning bar
    of its task, architecture family and optimizer; ``None`` where no bar is known).
    """
    import torch

    from training_zoo.baselines import learned, learned_threshold

    if isinstance(shard, dict):
        shard = Shard(**shard)
    rule_cls, rule, task, net, per_epoch, total = _setup(shard, device)
    m = shard.n_networks
    steps = checkpoint_steps(total, shard.checkpoints, shard.spacing)
    recorder = Recorder(net, task.x_probe, shard.units_per_layer, seed=shard.seed)
    # epochs only bounds the loop here; max_steps fixes the exact step count.
    result = train_population(
        rule, net, task, shard.optimizer, lr=torch.tensor(shard.lrs), epochs=total / per_epoch + 1,
        batch_size=shard.batch_size, seed=shard.seed, max_steps=total, checkpoints=steps,
        recorder=recorder, progress=progress, eval_examples=CHECKPOINT_EVAL_EXAMPLES,
    )
    ids = [f"{shard.shard_id}/{i}" for i in range(m)]
    label = describe(shard.arch)
    bar = learned_threshold(shard.task, shard.arch["family"], shard.optimizer)
    final = result["test_accuracy"].tolist()
    metadata = []
    for i in range(m):
        metadata.append({
            "rule": shard.rule, "family": rule_cls.family, "variant": shard.variant,
            "optimizer": shard.optimizer,
            "architecture": label, "arch_family": shard.arch["family"], "task": shard.task,
            "seed": shard.seeds[i], "learned": learned(final[i], bool(result["diverged"][i]), bar),
            "learned_threshold": bar,
            "hyperparameters": {
                "lr": shard.lrs[i], "init": shard.inits[i], "init_scale": shard.init_scales[i],
                "batch_size": shard.batch_size, "input_scale": shard.input_scale,
                "epochs": shard.epochs, "steps": total, "checkpoint_spacing": shard.spacing,
                "checkpoints": shard.checkpoints,
                "checkpoint_eval_examples": min(CHECKPOINT_EVAL_EXAMPLES, len(task.y_test)),
                **{k: v for k, v in shard.arch.items() if k != "family"},
                "rule": {k: v for k, v in rule.hyperparameters().items()
                         if isinstance(v, (int, float, str, bool))},
                "shard_seed": shard.seed,
            },
        })
    n_div = int(result["diverged"].sum())
    if n_div:
        log.warning("shard %s: %d of %d networks diverged (reported with diverged=True)",
                    shard.shard_id, n_div, m)
    return recorder.records(ids, metadata, result["diverged"], result["diverged_step"])
