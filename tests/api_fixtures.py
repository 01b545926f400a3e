"""Shared pieces of the service tests: a tiny model fitted in the test, recordings as bytes.

The tiny model is a real :class:`RuleIdentifier` fitted (through h8/h9's API) on small synthetic
recordings whose three kinds of dynamics stand in for three rules of the catalogue; its card's
catalogue comes from ``training_zoo``'s registry like a real model's. It tests the service, not
accuracy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from rulefinder.recording import make_recording

TINY_RULES = ("backprop", "feedback_alignment", "hebbian")
OPTIMIZERS = ("sgd", "adam")


def synthetic_recording(kind: int, seed: int, sessions: int = 6, stimuli: int = 12, units: int = 24, areas=("V1", "V2")):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, sessions)
    base = rng.normal(size=(stimuli, units))
    drift = rng.normal(size=(stimuli, units))
    shape = [t, np.sqrt(t), t**3][kind]
    scale = [1.0, 0.3, 2.0][kind]
    resp = base[None] + scale * shape[:, None, None] * drift[None] + 0.05 * rng.normal(size=(sessions, stimuli, units))
    unit_area = np.array([areas[i * len(areas) // units] for i in range(units)])
    return make_recording(resp.astype(np.float32), unit_area=unit_area, area_order=list(areas))


def register_tiny_model(models_dir: Path, name: str = "default") -> None:
    """Fit a tiny RuleIdentifier and register it under ``models_dir`` (a registry data dir)."""
    from rulefinder.classify.card import AccuracyCell, ModelCard, catalogue_entries
    from rulefinder.classify.estimator import RuleIdentifier
    from rulefinder.classify.registry import ModelRegistry
    from training_zoo.rules import catalogue

    recs, labels, groups = [], {"rule": [], "family": [], "optimizer": []}, []
    fams = {e["id"]: e["family"] for e in catalogue()}
    for kind, rule in enumerate(TINY_RULES):
        for seed in range(6):
            recs.append(synthetic_recording(kind, 100 * kind + seed))
            labels["rule"].append(rule)
            labels["family"].append(fams[rule])
            labels["optimizer"].append(OPTIMIZERS[seed % 2])
            groups.append(seed % 3)
    est = RuleIdentifier(classifier="logreg", max_iter=200, calibration_folds=2).fit(recs, labels, groups=groups)
    cat = catalogue_entries([e for e in catalogue() if e["id"] in TINY_RULES])
    card = ModelCard(
        name=name,
        estimator="",
        catalogue=cat,
        labels={t: [str(c) for c in est.classes_[t]] for t in ("rule", "family", "optimizer")},
        expected_accuracy=[
            AccuracyCell(units=u, sessions=s, noise=n, accuracy=0.5 + 0.01 * u / 10, n=10)
            for u in (10, 30)
            for s in (3, 6)
            for n in ("none", "moderate", "high")
        ],
        description="tiny test model (synthetic data)",
    )
    ModelRegistry(data_dir=models_dir, packaged_dir=None).register(est, card, name=name, replace=True)


def npz_bytes(rec=None, **extra) -> bytes:
    from rulefinder.recording.npz import recording_to_npz_arrays

    rec = rec if rec is not None else synthetic_recording(0, 1)
    arrays = recording_to_npz_arrays(rec)
    arrays.update(extra)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def raw_npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


_TINY_CACHE: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """A registry data dir holding the tiny ``default`` model, fitted once per test process."""
    if "dir" not in _TINY_CACHE:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="rulefinder-tiny-model-"))
        register_tiny_model(root / "models")
        _TINY_CACHE["dir"] = root / "models"
    return _TINY_CACHE["dir"]


def data_dir_with_model(data_dir: Path) -> Path:
    """``data_dir`` with the tiny model copied into its registry (``data_dir/models``)."""
    import shutil

    shutil.copytree(tiny_model_dir(), data_dir / "models", dirs_exist_ok=True)
    return data_dir


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (the app from ``create_app``)."""

    def __init__(self, settings):
        import socket

        import uvicorn

        from api.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))

    def __enter__(self):
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
