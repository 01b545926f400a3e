"""Synthetic ``NetworkRecord``s for the store tests (also imported by the writer subprocesses)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rulefinder.network_record import NetworkRecord
from rulefinder.recording import make_recording

RULES = ("backprop", "feedback_alignment", "hebbian")
WEIGHT_STATS = ("mean", "std", "abs_mean", "fro_norm")


def make_network_record(
    network_id: str,
    *,
    seed: int = 0,
    checkpoints: int = 6,
    stimuli: int = 8,
    widths: tuple[int, ...] = (5, 4),
    rule: str | None = None,
    task: str = "digits",
    diverged: bool = False,
) -> NetworkRecord:
    """A network with ``len(widths)`` layers of the given widths, random but seeded."""
    rng = np.random.default_rng(seed)
    layers = [f"layer{i}" for i in range(len(widths))]
    units = int(sum(widths))
    responses = rng.normal(size=(checkpoints, stimuli, units)) * 3.0
    responses[0, 0, 0] = np.nan  # a missing value must survive the trip
    steps = np.cumsum(rng.integers(1, 50, size=checkpoints)).astype(float)
    rec = make_recording(
        responses,
        session_time=steps,
        unit_area=np.repeat(layers, widths),
        performance=np.linspace(0.1, 0.9, checkpoints),
        area_order=layers,
        # Like the zoo's recorder: unit ids name the layer and the unit sampled from it.
        unit=[f"{layer}:{j}" for layer, w in zip(layers, widths, strict=True) for j in range(w)]
        if seed % 2 == 0
        else None,
        attrs={"network_id": network_id},
    )
    # The output layer has weights but no recorded activity: an aux-only layer.
    wlayers = layers + ["readout"]
    # Two conventions for the checkpoint axis: the zoo's (index + a `step` coordinate), and
    # the step as the index itself.
    ckpt = (
        {"checkpoint": np.arange(checkpoints), "step": ("checkpoint", steps)}
        if seed % 2 == 0
        else {"checkpoint": steps}
    )
    weight_stats = xr.DataArray(
        rng.normal(size=(checkpoints, len(wlayers), len(WEIGHT_STATS))),
        dims=("checkpoint", "layer", "weight_stat"),
        coords={**ckpt, "layer": wlayers, "weight_stat": list(WEIGHT_STATS)},
    )
    activity_change = xr.DataArray(
        np.abs(rng.normal(size=(checkpoints, len(layers)))),
        dims=("checkpoint", "layer"),
        coords={**ckpt, "layer": layers},
    )
    train_loss = xr.DataArray(
        np.exp(-np.arange(checkpoints) / 3.0), dims=("checkpoint",), coords=ckpt
    )
    metadata = {
        "rule": rule or RULES[seed % len(RULES)],
        "family": "backprop",
        "optimizer": ("sgd", "adam")[seed % 2],
        "architecture": f"mlp{len(widths)}x{max(widths)}",
        "arch_family": "mlp",
        "task": task,
        "seed": seed,
        "hyperparameters": {"lr": 0.01 * (1 + seed % 3), "batch_size": 32, "nested": {"a": [1, 2]}},
    }
    return NetworkRecord(
        network_id=network_id,
        recording=rec,
        metadata=metadata,
        weight_stats=weight_stats,
        activity_change=activity_change,
        train_loss=train_loss,
        diverged=diverged,
        extras={"note": f"net {seed}"},
    )


def make_shard(prefix: str, n: int, *, seed0: int = 0, **kwargs) -> list[NetworkRecord]:
    return [make_network_record(f"{prefix}/{i}", seed=seed0 + i, **kwargs) for i in range(n)]


def test_synthetic_records_are_valid_recordings():
    from rulefinder.recording import validate_recording

    r = make_network_record("x/0", widths=(3, 2, 7))
    validate_recording(r.recording)
    assert r.recording.sizes["unit"] == 12
