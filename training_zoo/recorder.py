"""The observable recorder: what a population looks like at each checkpoint of training.

At every checkpoint it runs the fixed probe inputs through all M networks and keeps, per
layer l (hidden layers ``layer1 ... layer{L-1}`` and the logits ``output``):

- activations of a fixed random subset of up to U units (chosen once per network and layer
  from the recorder's seed, the same units at every checkpoint);
- weight statistics of the weights INTO the layer: mean, std, abs_mean, fro_norm, max_abs;
- the layer-wise activity change over ALL its units, relative to the previous checkpoint:
      change_t = ||H_t - H_{t-1}||_F / (||H_{t-1}||_F + eps)     (0 at the first checkpoint)
- the train loss (on a fixed training subset) and the test accuracy.

The ``output`` area holds what the implementation's output units ARE, which differs between
implementations: ``logits`` (a linear readout), ``softmax`` or ``sigmoid`` units, or the
``energy_output`` neurons of an energy-based model (EqProp's free fixed point). A rule says
which by its optional ``output_units`` attribute (default ``logits``); the recording's attrs
and the record's metadata carry it as ``output_units``. The output units' pre-activations
(``W_L h_{L-1} + b_L``, same sampled units) are kept as well: in the record's extras
(``output_preactivation``, when they differ from the recorded output), so that a model can be
trained on either (:func:`with_output_preactivation` swaps them into the ``output`` area).

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
OUTPUT_UNITS = ("logits", "softmax", "sigmoid", "energy_output")


def output_units_of(rule) -> str:
    """What ``rule``'s network output units are (``logits`` unless the rule says otherwise)."""
    units = getattr(rule, "output_units", "logits") if rule is not None else "logits"
    if units not in OUTPUT_UNITS:
        raise ValueError(f"rule {getattr(rule, 'id', rule)!r}: output_units {units!r} is not one of {OUTPUT_UNITS}")
    return units


def output_activity(units: str, out: torch.Tensor) -> torch.Tensor:
    """The output units' activity from the network's last ``post`` entry."""
    if units == "softmax":
        return torch.softmax(out, -1)
    if units == "sigmoid":
        return torch.sigmoid(out)
    return out  # logits, or the energy model's output neurons (already its state)


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
        self.output_pre: list[np.ndarray] = []  # per checkpoint: (M, K, U_out) pre-activations
        self.output_units = "logits"
        self._previous: list[torch.Tensor] | None = None

    @torch.no_grad()
    def record(self, step: int, net, train_loss: torch.Tensor, test_accuracy: torch.Tensor,
               rule=None, state=None) -> None:
        """Record one checkpoint. A rule with its own forward pass (the optional
        ``rule.forward(net, state, x)`` hook, e.g. EqProp's fixed point) is recorded through it."""
        if rule is not None and hasattr(rule, "forward"):
            pre, post = rule.forward(net, state, self.probes)
        else:
            pre, post = net.forward(self.probes)
        self.output_units = output_units_of(rule)
        post = [*post[:-1], output_activity(self.output_units, post[-1])]
        layers = [unit_view(net, h).float() for h in post[1:]]
        out_idx = self.unit_index[-1].unsqueeze(1).expand(-1, pre[-1].shape[1], -1)
        self.output_pre.append(torch.gather(unit_view(net, pre[-1]).float(), 2, out_idx).cpu().numpy())
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
        out_pre = np.stack(self.output_pre, 1)  # (M, C, K, U_out)
        n_out = out_pre.shape[-1]
        # The recording contract's checks run once, on network 0's recording, then on the
        # whole population's values at once; every network's objects are then views of
        # population-wide arrays (building 4 xarray objects per network with their indexes
        # cost more than training a small shard). A failed check falls back to building the
        # network's recording alone, so that the error names it.
        template = make_recording(
            resp[0], session_time=steps, unit_area=areas, stimulus=np.arange(k), performance=acc[0],
            area_order=self.names, unit=labels, source=network_ids[0], attrs={},
        )
        nan = np.isnan(resp)
        if np.isinf(resp).any() or nan.all(axis=(1, 2)).any() or nan.all(axis=(2, 3)).any():
            for i in range(self.m):  # raises the RecordingError naming the network
                make_recording(resp[i], session_time=steps, unit_area=areas, stimulus=np.arange(k),
                               performance=acc[i], area_order=self.names, unit=labels, source=network_ids[i])
        coords = {name: c.variable for name, c in template.coords.items() if name != "performance"}
        population = xr.DataArray(
            resp.astype(np.float64), dims=("network", *template.dims),
            coords={**coords, "performance": (("network", "session"), acc.astype(np.float64))},
            name=template.name,
        )
        ckpt = {"checkpoint": np.arange(len(steps)), "step": ("checkpoint", steps)}
        ws_all = xr.DataArray(wstats, dims=("network", "checkpoint", "layer", "weight_stat"),
                              coords={**ckpt, "layer": self.names, "weight_stat": list(WEIGHT_STATS)})
        ac_all = xr.DataArray(change, dims=("network", "checkpoint", "layer"), coords={**ckpt, "layer": self.names})
        tl_all = xr.DataArray(loss, dims=("network", "checkpoint"), coords=ckpt)
        out = []
        for i in range(self.m):
            rec = population[i]
            rec.attrs = {"network_id": network_ids[i], "output_units": self.output_units,
                         "area_order": template.attrs["area_order"]}
            extras = {"diverged_step": int(dstep[i])} if div[i] else {}
            if not np.array_equal(out_pre[i], resp[i][..., -n_out:]):
                extras["output_preactivation"] = {
                    "dims": ["session", "stimulus", "unit"],
                    "data": np.round(out_pre[i].astype(np.float64), 6).tolist(),
                }
            meta = {**dict(metadata[i]), "output_units": self.output_units}
            out.append(NetworkRecord(network_ids[i], rec, meta, ws_all[i], ac_all[i], tl_all[i],
                                     diverged=bool(div[i]), extras=extras))
        return out


def with_output_preactivation(record: NetworkRecord) -> NetworkRecord:
    """The record with its ``output`` area holding the output units' pre-activations instead
    of their activity (the same record when they are the same, e.g. for logits)."""
    pre = record.extras.get("output_preactivation")
    if pre is None:
        return record
    data = np.asarray(pre["data"], dtype=record.recording.dtype)
    rec = record.recording.copy()
    is_out = np.asarray(rec.coords["unit_area"].values == "output")
    values = rec.values.copy()
    values[..., is_out] = data
    rec = rec.copy(data=values)
    rec.attrs = {**rec.attrs, "output_units": "preactivation"}
    return NetworkRecord(record.network_id, rec, {**record.metadata, "output_units": "preactivation"},
                         record.weight_stats, record.activity_change, record.train_loss,
                         diverged=record.diverged, extras=record.extras)
