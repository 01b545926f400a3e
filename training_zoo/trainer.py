"""The population trainer: M networks of one architecture and task trained at once.

One population shares the architecture shape, the task, the rule, the optimizer, the batch
size and the minibatch order (all drawn from ``seed``); each network has its own learning
rate (and, through :func:`training_zoo.architectures.reinitialise`, its own init seed,
scheme and scale). Every step:

    step = rule.step(net, state, x_batch, y_batch)       # descent directions, loss (M,)
    optimizer.step(step.weights + step.biases, frozen)  # p <- p - lr * opt(direction)

Divergence: a network whose batch loss is non-finite or above ``blowup_loss``, or whose
update is non-finite, is marked diverged at that step, restored to its last checkpoint
snapshot and frozen there (it stops moving; the log says so; its record carries
``diverged=True``). Nothing non-finite is ever recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from training_zoo.optimizers import make_optimizer
from training_zoo.rules.base import LearningRule
from training_zoo.tasks import Task, load_task

log = logging.getLogger(__name__)

SPACINGS = ("even", "geometric")


def checkpoint_steps(total_steps: int, count: int = 21, spacing: str = "even") -> list[int]:
    """``count`` strictly increasing steps from 0 to ``total_steps`` (inclusive).

    ``even``: linearly spaced; ``geometric``: 0 then geometrically spaced from 1, so early
    learning is sampled densely.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown checkpoint spacing {spacing!r}; known: {', '.join(SPACINGS)}")
    if count < 2:
        raise ValueError("need at least 2 checkpoints")
    if total_steps < count - 1:
        raise ValueError(f"{total_steps} training steps cannot hold {count} distinct checkpoints")
    if spacing == "even":
        raw = np.linspace(0, total_steps, count)
    else:
        raw = np.concatenate([[0.0], np.geomspace(1, total_steps, count - 1)])
    steps = [int(round(s)) for s in raw]
    for i in range(1, count):  # rounding may collide at the dense end: push forward
        steps[i] = max(steps[i], steps[i - 1] + 1)
    for i in range(count - 2, -1, -1):  # ... and stay inside the run
        steps[i] = min(steps[i], steps[i + 1] - 1)
    steps[-1] = total_steps
    return steps


def rule_logits(net, x, rule=None, state=None) -> torch.Tensor:
    """The network's output logits (M, B, C), through the rule's own forward pass when it has one.

    Optional rule hooks (rules whose network is not just ``net.forward``, e.g. EqProp's fixed
    point or Forward-Forward's normalised layers): ``rule.forward(net, state, x) -> (pre, post)``
    in ``net.forward``'s layout, and ``rule.predict(net, state, x) -> scores (M, B, C)`` for
    classification (the class with the highest score wins). ``forward`` must be a function of
    its arguments that draws no random numbers: :func:`evaluate` runs it once per chunk and
    hands the same result to a ``predict`` that calls it again. A third hook,
    ``rule.bind_optimizer(state, make)``, is called by :func:`train_population` with
    ``make(params) -> optimizer`` of the population's kind and settings, and a fourth,
    ``rule.plan(state, total_steps, batch_size)``, once before the first step with the run's
    length.
    """
    if rule is not None and hasattr(rule, "forward"):
        return rule.forward(net, state, x)[1][-1]
    return net.logits(x)


@torch.no_grad()
def evaluate(net, x: torch.Tensor, y: torch.Tensor, chunk: int = 512, rule=None, state=None,
             accuracy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network (accuracy, mean cross-entropy) on ``(x, y)``: two (M,) tensors.

    With a ``rule`` that has the optional hooks (see :func:`rule_logits`), the loss comes from
    its forward pass and the accuracy from its ``predict``. ``accuracy=False`` skips the
    accuracy (NaN) where only the loss is wanted: a rule's ``predict`` can cost many forward
    passes (Forward-Forward scores every candidate label).
    """
    correct = torch.zeros(net.m, device=x.device, dtype=torch.float64)
    loss = torch.zeros(net.m, device=x.device, dtype=torch.float64)
    predicts = rule is not None and hasattr(rule, "predict")
    for i in range(0, len(x), chunk):
        xx, yy = x[i : i + chunk], y[i : i + chunk]
        with _forward_once(rule, net, state, xx):
            z = rule_logits(net, xx, rule, state)
            if accuracy:
                scores = rule.predict(net, state, xx) if predicts else z
                correct += (scores.argmax(-1) == yy.unsqueeze(0)).sum(1).double()
        ce = torch.nn.functional.cross_entropy(
            z.reshape(-1, z.shape[-1]).double(), yy.repeat(net.m), reduction="none"
        ).reshape(net.m, -1)
        loss += ce.sum(1)
    acc = (correct / len(x)).float() if accuracy else torch.full((net.m,), float("nan"), device=x.device)
    return acc, (loss / len(x)).float()


@contextlib.contextmanager
def _forward_once(rule, net, state, x):
    """While evaluating one chunk, ``rule.forward`` on that very chunk runs once: a ``predict``
    built on the forward pass (EqProp's free fixed point) reuses the evaluation's relaxation
    instead of relaxing again. The forward hook is a function of (net, state, x) alone and
    draws no random numbers (see :func:`rule_logits`), so this changes no result."""
    if rule is None or not hasattr(rule, "forward") or "forward" in vars(rule):
        yield
        return
    original = rule.forward
    cache: list = []

    def forward(net_, state_, x_):
        if net_ is net and state_ is state and x_ is x:
            if not cache:
                cache.append(original(net_, state_, x_))
            return cache[0]
        return original(net_, state_, x_)

    rule.forward = forward
    try:
        yield
    finally:
        del rule.forward


def _as_rule(rule) -> LearningRule:
    if isinstance(rule, LearningRule):
        return rule
    from training_zoo.rules.registry import get_rule

    return get_rule(rule)()


def train_population(
    rule,
    net,
    task,
    optimizer: str = "sgd",
    lr=0.05,
    epochs: float = 5,
    batch_size: int = 32,
    seed: int = 0,
    *,
    max_steps: int | None = None,
    checkpoints: Sequence[int] | None = None,
    recorder=None,
    optimizer_kwargs: dict | None = None,
    blowup_loss: float = 1e3,
    progress: bool = False,
    final_eval: bool = True,
    eval_examples: int | None = None,
) -> dict:
    """Train the M networks of ``net`` (a DenseStack or PopulationCNN) in place.

    Args:
        rule: a :class:`LearningRule` instance or a registered rule id.
        net: the population (its device is the training device).
        task: a :class:`Task` or a task name for :func:`load_task`.
        optimizer: ``sgd`` | ``momentum`` | ``adam``; ``lr`` a float or a per-network (M,) tensor.
        epochs: passes over the training set (fractions allowed); ``max_steps`` caps the steps.
        seed: fixes the rule's state (feedback weights, noise) and the minibatch order.
        checkpoints: steps at which ``recorder.record(step, net, train_loss, test_acc)`` is
            called (0 = before training); needs a recorder.
        final_eval: evaluate on the test set after training (benchmarks time training alone).
        eval_examples: checkpoints before the last measure test accuracy on the test set's
            first ``eval_examples`` examples (a fixed subset; the split is shuffled) instead of
            all of it; the last checkpoint and the final evaluation always use the full test set.
            ``None``: the full test set everywhere.

    Returns a dict: ``test_accuracy`` (M,), ``test_loss`` (M,), ``train_loss`` (M,) (mean batch
    loss over the last epoch), ``diverged`` (M,) bool, ``diverged_step`` (M,) (-1 if not),
    ``steps``, ``seconds``, ``state`` (the rule's final state).
    """
    rule = _as_rule(rule)
    if isinstance(task, str):
        task = load_task(task)
    device = net.device
    task = task.to(device)
    m = net.m
    gen = torch.Generator().manual_seed(int(seed))
    state = rule.init_state(net, gen)
    opt = make_optimizer(optimizer, net.parameters(), lr, **(optimizer_kwargs or {}))
    if hasattr(rule, "bind_optimizer"):  # rule state learning through W's optimizer (Kolen-Pollack's B)
        rule.bind_optimizer(state, lambda params: make_optimizer(optimizer, params, lr, **(optimizer_kwargs or {})))

    n = len(task.y_train)
    batch_size = min(int(batch_size), n)
    per_epoch = n // batch_size
    total = int(math.ceil(epochs * per_epoch))
    if max_steps is not None:
        total = min(total, int(max_steps))
    if hasattr(rule, "plan"):  # phases sized to this run (the Hebbian rules' unsupervised phase)
        rule.plan(state, total, batch_size)
    ckpts = sorted(set(int(c) for c in checkpoints)) if checkpoints is not None else []
    if ckpts and recorder is None:
        raise ValueError("checkpoints were given without a recorder")
    x_fit, y_fit = task.x_train[:512], task.y_train[:512]
    if eval_examples is not None and int(eval_examples) < 1:
        raise ValueError(f"eval_examples is {eval_examples}: expected a positive count or None")
    x_eval, y_eval = (task.x_test, task.y_test) if eval_examples is None else (
        task.x_test[: int(eval_examples)], task.y_test[: int(eval_examples)])
    last_eval: list = []  # (acc, test loss) of a checkpoint at the last step: the final evaluation

    diverged = torch.zeros(m, dtype=torch.bool, device=device)
    diverged_step = torch.full((m,), -1, dtype=torch.long)
    snapshot = [p.clone() for p in net.parameters()]
    recent = torch.zeros(m, device=device)
    recent_n = 0
    next_ck = 0

    def checkpoint(step: int) -> None:
        nonlocal next_ck
        # The last update may have blown a network up after its loss was checked: catch that
        # here so that nothing non-finite or exploded is ever recorded.
        last = step == total
        x_ev, y_ev = (task.x_test, task.y_test) if last else (x_eval, y_eval)
        acc, test_loss = evaluate(net, x_ev, y_ev, rule=rule, state=state)
        finite = torch.ones(m, dtype=torch.bool, device=device)
        for p in net.parameters():
            finite &= torch.isfinite(p).reshape(m, -1).all(1)
        blown = (~finite | ~torch.isfinite(test_loss) | (test_loss > blowup_loss)) & ~diverged
        if bool(blown.any()):
            log.warning("rule %s: networks %s diverged before step %d; frozen at last checkpoint",
                        rule.id, torch.nonzero(blown).flatten().tolist(), step)
            diverged[:] = diverged | blown
            diverged_step[blown.cpu()] = step
            with torch.no_grad():
                for s, p in zip(snapshot, net.parameters()):
                    p[blown] = s[blown]
            acc, test_loss = evaluate(net, x_ev, y_ev, rule=rule, state=state)
        if last:
            last_eval[:] = [acc, test_loss]
        _, fit_loss = evaluate(net, x_fit, y_fit, rule=rule, state=state, accuracy=False)
        recorder.record(step, net, fit_loss, acc, rule=rule, state=state)
        for s, p in zip(snapshot, net.parameters()):
            s.copy_(p)
        next_ck += 1

    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{rule.id} x{m}", leave=False)
    step = 0
    perm = torch.randperm(n, generator=gen).to(device)
    pos = 0
    while True:
        if next_ck < len(ckpts) and ckpts[next_ck] == step:
            checkpoint(step)
        if step >= total:
            break
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=gen).to(device)
            pos = 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        out = rule.step(net, state, task.x_train[idx], task.y_train[idx])
        directions = [*out.weights, *out.biases]
        loss = out.loss.detach()
        # A non-finite direction makes the parameters non-finite, which the next step's loss
        # (or the next checkpoint's check) catches and undoes from the snapshot: checking the
        # loss alone keeps this O(M) per step instead of a pass over every parameter.
        bad = ~torch.isfinite(loss) | (loss > blowup_loss)
        new = bad & ~diverged
        if bool(new.any()):
            idx_new = torch.nonzero(new).flatten().tolist()
            log.warning("rule %s: networks %s diverged at step %d (loss %s); frozen at last checkpoint",
                        rule.id, idx_new, step, loss[new].tolist())
            diverged |= new
            diverged_step[new.cpu()] = step
            with torch.no_grad():
                for s, p in zip(snapshot, net.parameters()):
                    p[new] = s[new]
        if bool(diverged.any()):
            keep = (~diverged).to(directions[0].dtype)
            directions = [torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
                          * keep.view(-1, *([1] * (d.dim() - 1))) for d in directions]
            loss = torch.where(diverged, torch.zeros_like(loss), loss)
        opt.step(directions, frozen=diverged)
        if total - step <= per_epoch:
            recent += loss
            recent_n += 1
        step += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if final_eval and last_eval:  # the parameters have not moved since the last checkpoint
        acc, test_loss = last_eval
    elif final_eval:
        acc, test_loss = evaluate(net, task.x_test, task.y_test, rule=rule, state=state)
    else:
        acc = test_loss = torch.full((m,), float("nan"), device=device)
    log.info("rule %s: trained %d networks for %d steps in %.2fs (mean test acc %.3f, %d diverged)",
             rule.id, m, total, seconds, float(acc[~diverged].mean()) if (~diverged).any() else float("nan"),
             int(diverged.sum()))
    return {
        "test_accuracy": acc.cpu(),
        "test_loss": test_loss.cpu(),
        "train_loss": (recent / max(recent_n, 1)).cpu(),
        "diverged": diverged.cpu(),
        "diverged_step": diverged_step,
        "steps": total,
        "seconds": seconds,
        "state": state,
    }
