"""What the zoo produces for one trained network, and the store keeps.

The contract between ``training_zoo`` (which makes these) and ``rulefinder.store`` (which
keeps them). A network's checkpoints are the sessions of its recording, its layers the areas
(``area_order`` from input to output) and its probe inputs the stimuli.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from rulefinder.vocabulary import METADATA_KEYS



@dataclass
class NetworkRecord:
    """One network's observables over training.

    Attributes:
        network_id: unique and stable within a zoo (e.g. ``"<shard id>/<index>"``).
        recording: the network as a recording (``make_recording``): dims ``(session, stimulus,
            unit)``, ``session_time`` = training step of each checkpoint, ``unit_area`` = layer
            name, ``area_order`` = layers input -> output, ``performance`` = test accuracy.
        metadata: JSON-serialisable; at least ``METADATA_KEYS`` plus ``hyperparameters`` (dict).
        weight_stats: dims ``(checkpoint, layer, weight_stat)``; coordinate ``weight_stat``
            names each statistic (e.g. ``mean``, ``std``, ``abs_mean``, ``fro_norm``).
        activity_change: dims ``(checkpoint, layer)``: relative change of the layer's probe
            activations since the previous checkpoint (0 at the first).
        train_loss: dims ``(checkpoint,)``.
        diverged: the network's loss became non-finite; such a network is reported, and the
            store keeps it out of training sets.
    """

    network_id: str
    recording: xr.DataArray
    metadata: dict[str, Any]
    weight_stats: xr.DataArray
    activity_change: xr.DataArray
    train_loss: xr.DataArray
    diverged: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [k for k in METADATA_KEYS if k not in self.metadata]
        if missing:
            raise ValueError(f"network {self.network_id}: metadata lacks {missing}")
        if tuple(self.weight_stats.dims) != ("checkpoint", "layer", "weight_stat"):
            raise ValueError(
                f"network {self.network_id}: weight_stats has dims {self.weight_stats.dims}, "
                "expected ('checkpoint', 'layer', 'weight_stat')"
            )
        if tuple(self.activity_change.dims) != ("checkpoint", "layer"):
            raise ValueError(
                f"network {self.network_id}: activity_change has dims {self.activity_change.dims}, "
                "expected ('checkpoint', 'layer')"
            )

    @property
    def test_accuracy(self) -> np.ndarray:
        return self.recording.coords["performance"].values
