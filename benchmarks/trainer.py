"""Population trainer vs a naive per-network loop, and its FLOP efficiency. Prints one JSON object.

speedup_vs_naive: the same networks and steps, trained (a) by the population trainer, M at
once, and (b) one network at a time: for backprop an ``nn.Module`` + ``torch.optim.SGD`` with
autograd, for every other rule the same rule's math on a population of one. Over the default
zoo's architecture mix (mlp, resmlp, cnn shapes from zoo_specs/default.yaml), per rule family
(its first registered rule). The naive loop is timed on ``NAIVE_SAMPLE`` networks and scaled to
M (each network costs the same).

flop_efficiency: achieved FLOP/s of backprop training (forward 2 n_in n_out, backward
4 n_in n_out per example and layer; 2 for the first layer, which needs no input gradient) over
the FLOP/s of a large float32 matmul measured in the same run, for MLPs of width >= 128.

Usage: python benchmarks/trainer.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import torch

from training_zoo.architectures import build_network, reinitialise
from training_zoo.rules import all_rules, get_rule
from training_zoo.tasks import load_task
from training_zoo.trainer import train_population

M = 32
STEPS = 30
BATCH = 32
NAIVE_SAMPLE = 3
# the default zoo's architecture families, at representative sizes
MIX = [
    ({"family": "mlp", "depth": 2, "width": 64, "activation": "relu"}, "digits"),
    ({"family": "mlp", "depth": 3, "width": 128, "activation": "tanh"}, "mnist5k_14"),
    ({"family": "resmlp", "depth": 3, "width": 64, "activation": "relu"}, "mnist1d"),
    ({"family": "cnn", "channels": [8, 16], "activation": "relu"}, "digits"),
]


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls: the machine is shared, so the minimum is the
    least-disturbed measurement (as timeit does)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _population_seconds(rule_id, arch, task, m, steps, repeats, lr=0.01):
    net = build_network(arch, task.input_shape, task.n_classes, m)
    reinitialise(net, ["default"] * m, [1.0] * m, list(range(m)))
    run = lambda: train_population(get_rule(rule_id)(), net, task, "sgd", lr=lr, epochs=100,  # noqa: E731
                                   batch_size=BATCH, max_steps=steps, final_eval=False)
    run()  # warm-up (allocations)
    return best_of(run, repeats)


class _Module(torch.nn.Module):
    def __init__(self, arch, input_shape, n_classes):
        super().__init__()
        act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[arch["activation"]]()
        self.shape = input_shape
        self.residual = arch["family"] == "resmlp"
        if arch["family"] == "cnn":
            layers, c = [], input_shape[0]
            for co in arch["channels"]:
                layers += [torch.nn.Conv2d(c, co, 3, 2, 1), act]
                c = co
            self.conv = torch.nn.Sequential(*layers)
            with torch.no_grad():
                n = self.conv(torch.zeros(1, *input_shape)).numel()
            self.dense, self.out = torch.nn.ModuleList(), torch.nn.Linear(n, n_classes)
        else:
            self.conv = None
            n_in = int(torch.tensor(input_shape).prod())
            widths = [arch["width"]] * arch["depth"]
            self.dense = torch.nn.ModuleList(
                torch.nn.Linear(a, b) for a, b in zip([n_in, *widths[:-1]], widths))
            self.out = torch.nn.Linear(widths[-1], n_classes)
        self.act = act

    def forward(self, x):
        if self.conv is not None:
            return self.out(self.conv(x.reshape(-1, *self.shape)).flatten(1))
        h = x
        for lin in self.dense:
            f = self.act(lin(h))
            h = h + f if (self.residual and f.shape == h.shape) else f
        return self.out(h)


def _naive_backprop_seconds(arch, task, n_networks, steps, repeats, lr=0.01):
    """nn.Module + torch.optim.SGD + autograd, one network after the other."""
    g = torch.Generator().manual_seed(0)
    models = []
    for i in range(n_networks):
        torch.manual_seed(i)
        model = _Module(arch, task.input_shape, task.n_classes)
        models.append((model, torch.optim.SGD(model.parameters(), lr=lr)))

    def run():
        for model, opt in models:
            for _ in range(steps):
                idx = torch.randint(0, len(task.y_train), (BATCH,), generator=g)
                loss = torch.nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    run()
    return best_of(run, repeats)


def _naive_rule_seconds(rule_id, arch, task, n_networks, steps, repeats, lr=0.01):
    """The same rule's math, one network (a population of one) after the other."""
    nets = []
    for i in range(n_networks):
        net = build_network(arch, task.input_shape, task.n_classes, 1)
        reinitialise(net, ["default"], [1.0], [i])
        nets.append(net)

    def run():
        for net in nets:
            train_population(get_rule(rule_id)(), net, task, "sgd", lr=lr, epochs=100,
                             batch_size=BATCH, max_steps=steps, final_eval=False)

    run()
    return best_of(run, repeats)


def matmul_flops(n=2048, repeats=7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b, repeats)


def trainer_flops(width, m, batch, steps, task, repeats) -> float:
    arch = {"family": "mlp", "depth": 2, "width": width, "activation": "relu"}
    net = build_network(arch, task.input_shape, task.n_classes, m)
    rule = get_rule("backprop")()
    run = lambda: train_population(rule, net, task, "sgd", lr=1e-4, epochs=100, batch_size=batch,  # noqa: E731
                                   max_steps=steps, final_eval=False)
    run()
    dt = best_of(run, repeats)
    sizes = net.sizes
    per_example = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))  # forward
    per_example += 2 * sizes[0] * sizes[1] + sum(4 * a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    return per_example * batch * m * steps / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer steps (CI)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    steps = 5 if args.quick else STEPS
    repeats = 2 if args.quick else 3
    tasks = {name: load_task(name) for name in {t for _, t in MIX} | {"mnist5k"}}

    families: dict[str, str] = {}
    for rid, cls in all_rules().items():
        families.setdefault(cls.family, rid)
    per_family = {}
    total_pop = total_naive = 0.0
    for family, rid in families.items():
        supports = get_rule(rid).supports
        pop = naive = 0.0
        for arch, tname in MIX:
            if arch["family"] not in supports:
                continue
            task = tasks[tname]
            pop += _population_seconds(rid, arch, task, M, steps, repeats)
            if rid == "backprop":
                sample = _naive_backprop_seconds(arch, task, NAIVE_SAMPLE, steps, repeats)
            else:
                sample = _naive_rule_seconds(rid, arch, task, NAIVE_SAMPLE, steps, repeats)
            naive += sample * M / NAIVE_SAMPLE
        per_family[family] = {"rule": rid, "population_s": round(pop, 3), "naive_s": round(naive, 3),
                              "speedup": round(naive / pop, 2)}
        total_pop += pop
        total_naive += naive

    # the matmul peak is measured before and after the trainer; the larger (conservative) is used
    peak = matmul_flops()
    achieved = {}
    for width in (128, 256, 512):
        achieved[str(width)] = trainer_flops(width, 32, 128, 3 if args.quick else 10, tasks["mnist5k"], 3)
    peak = max(peak, matmul_flops())
    eff = {k: round(v / peak, 3) for k, v in achieved.items()}
    out = {
        "speedup_vs_naive": round(total_naive / total_pop, 2),
        "speedup_min_family": min(v["speedup"] for v in per_family.values()),
        "per_family": per_family,
        "flop_efficiency": min(eff.values()),
        "flop_efficiency_by_width": eff,
        "matmul_gflops": round(peak / 1e9, 2),
        "networks": M, "steps": steps, "batch_size": BATCH, "threads": args.threads,
        "architectures": [a for a, _ in MIX],
        "torch": torch.__version__, "machine": platform.machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
