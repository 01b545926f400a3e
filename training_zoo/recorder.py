"""The observable recorder: what a population looks like at each checkpoint of training.

At every checkpoint it runs the fixed probe inputs through all M networks and keeps, per
layer l (hidden layers ``layer1 ... layer{L-1}`` and the logits ``output``):

- activations of a fixed random subset of up to U units (chosen once per network and layer
  from the recorder's seed, the same units at every checkpoint);
- weight statistics of the weights INTO the layer: mean, std, abs_mean, fro_norm, max_abs;
- the layer-wise activity change over ALL its units, relative to the previous checkpoint:
      change_t = ||H_t - H_{t-1}||_F / (||H_{t-1}||_F + eps)     (0 at the first checkpoint)
- the train loss (on a fixed training subset) and the test accuracy.

:meth:`Recorder.records` turns that into one :class:`rulefinder.network_record.NetworkRecord`
per network: checkpoints are sessions (``session_time`` = step), layers are areas
(``area_order`` input -> output), probes are stimuli, test accuracy is ``performance``.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from rulefinder.network_record import NetworkRecord
from rulefinder.recording import make_recording
from training_zoo.architectures import unit_view

WEIGHT_STATS = ("mean", "std", "abs_mean", "fro_norm", "max_abs")


def layer_names(n_layers: int) -> list[str]:
    return [f"layer{i}" for i in range(1, n_layers)] + ["output"]


class Recorder:
    """Collects observables of the M networks of ``net`` on ``probes`` (K, n_features)."""

    def __init__(self, net, probes: torch.Tensor, units_per_layer: int = 64, seed: int = 0):
        self.m = net.m
        self.probes = probes.to(net.device)
        self.units_per_layer = int(units_per_layer)
        self.names = layer_names(net.n_layers)
        gen = torch.Generator().manual_seed(int(seed))
        self.unit_index = []  # per layer: (M, U_l) indices into the layer's units
        for n_units in net.sizes[1:]:
            u = min(self.units_per_layer, n_units)
            idx = torch.stack([torch.randperm(n_units, generator=gen)[:u].sort().values for _ in range(self.m)])
            self.unit_index.append(idx.to(net.device))
        self.steps: list[int] = []
        self.responses: list[np.ndarray] = []  # per checkpoint: (M, K, sum U_l)
        self.weight_stats: list[np.ndarray] = []  # (M, L, n_stats)
        self.activity_change: list[np.ndarray] = []  # (M, L)
        self.train_loss: list[np.ndarray] = []
        self.test_accuracy: list[np.ndarray] = []
        self._previous: list[torch.Tensor] | None = None

    @torch.no_grad()
    def record(self, step: int, net, train_loss: torch.Tensor, test_accuracy: torch.Tensor,
               rule=None, state=None) -> None:
        """Record one checkpoint. A rule with its own forward pass (the optional
        ``rule.forward(net, state, x)`` hook, e.g. EqProp's fixed point) is recorded through it."""
        if rule is not None and hasattr(rule, "forward"):
            _, post = rule.forward(net, state, self.probes)
        else:
            _, post = net.forward(self.probes)
        layers = [unit_view(net, h).float() for h in post[1:]]
        sampled, change = [], []
        for layer, h in enumerate(layers):
            idx = self.unit_index[layer].unsqueeze(1).expand(-1, h.shape[1], -1)
            sampled.append(torch.gather(h, 2, idx))
            if self._previous is None:
                change.append(torch.zeros(self.m, device=h.device))
            else:
                prev = self._previous[layer]
                num = (h - prev).reshape(self.m, -1).norm(dim=1)
                change.append(num / (prev.reshape(self.m, -1).norm(dim=1) + 1e-12))
        self._previous = layers
        stats = []
        for w in net.weights:
            wf = w.reshape(self.m, -1).float()
            stats.append(torch.stack([
                wf.mean(1), wf.std(1), wf.abs().mean(1), wf.norm(dim=1), wf.abs().amax(1),
            ], 1))
        self.steps.append(int(step))
        self.responses.append(torch.cat(sampled, 2).cpu().numpy())
        self.weight_stats.append(torch.stack(stats, 1).cpu().numpy())
        self.activity_change.append(torch.stack(change, 1).cpu().numpy())
        self.train_loss.append(train_loss.float().cpu().numpy())
        self.test_accuracy.append(test_accuracy.float().cpu().numpy())

    def unit_labels(self) -> tuple[list[str], list[str]]:
        """Per recorded unit: its area (layer name) and a label ``layer:index`` (network 0's
        indices are not shared across networks, so the label is the position, not the unit)."""
        areas, labels = [], []
        for name, idx in zip(self.names, self.unit_index):
            for j in range(idx.shape[1]):
                areas.append(name)
                labels.append(f"{name}:{j}")
        return areas, labels

    def records(
        self,
        network_ids: list[str],
        metadata: list[dict],
        diverged: torch.Tensor | np.ndarray | None = None,
        diverged_step: torch.Tensor | np.ndarray | None = None,
    ) -> list[NetworkRecord]:
        """One NetworkRecord per network (needs at least 3 checkpoints)."""
        if len(self.steps) < 3:
            raise ValueError(f"{len(self.steps)} checkpoints recorded: a recording needs at least 3")
        resp = np.stack(self.responses, 1)  # (M, C, K, U)
        wstats = np.stack(self.weight_stats, 1)  # (M, C, L, S)
        change = np.stack(self.activity_change, 1)  # (M, C, L)
        loss = np.stack(self.train_loss, 1)  # (M, C)
        acc = np.clip(np.stack(self.test_accuracy, 1), 0.0, 1.0)
        div = np.zeros(self.m, bool) if diverged is None else np.asarray(diverged, bool)
        dstep = np.full(self.m, -1) if diverged_step is None else np.asarray(diverged_step)
        areas, labels = self.unit_labels()
        steps = np.asarray(self.steps, dtype=float)
        k = resp.shape[2]
        out = []
        for i in range(self.m):
            rec = make_recording(
                resp[i], session_time=steps, unit_area=areas, stimulus=np.arange(k),
                performance=acc[i], area_order=self.names, unit=labels,
                source=network_ids[i], attrs={"network_id": network_ids[i]},
            )
            ckpt = {"checkpoint": np.arange(len(steps)), "step": ("checkpoint", steps)}
            ws = xr.DataArray(wstats[i], dims=("checkpoint", "layer", "weight_stat"),
                              coords={**ckpt, "layer": self.names, "weight_stat": list(WEIGHT_STATS)})
            ac = xr.DataArray(change[i], dims=("checkpoint", "layer"), coords={**ckpt, "layer": self.names})
            tl = xr.DataArray(loss[i], dims=("checkpoint",), coords=ckpt)
            extras = {"diverged_step": int(dstep[i])} if div[i] else {}
            out.append(NetworkRecord(network_ids[i], rec, dict(metadata[i]), ws, ac, tl,
                                     diverged=bool(div[i]), extras=extras))
        return out
