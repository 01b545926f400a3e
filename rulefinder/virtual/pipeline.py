"""Composable, seeded virtual experiments whose description travels with every sample.

``VirtualExperiment(steps=[...], seed=...)`` applies its steps in order. Each step draws from
its own child of ``numpy.random.SeedSequence(seed)``, so a seed fixes the result, and changing
one step's parameters leaves the randomness of the others untouched. The derived recording
carries ``attrs["virtual"]``: a JSON string ``{"seed": ..., "steps": [spec, ...]}`` (plus
``"previous"``, the description already on the input, when experiments are chained) that
survives saving to NPZ/Zarr attributes and rebuilds the same experiment with
:meth:`VirtualExperiment.from_json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr

from rulefinder.recording.model import validate_recording
from rulefinder.virtual.transforms import Transform, VirtualSpecError, parse_step

VIRTUAL_ATTR = "virtual"


class VirtualExperiment:
    """A pipeline of transforms with a seed.

    Parameters:
        steps: transforms or spec dicts (``{"op": ..., **params}``), applied in order.
        seed: integer seed (``None``: fresh entropy, recorded in the spec once drawn).
    """

    def __init__(self, steps: Sequence[dict | Transform] = (), seed: int | None = None):
        self.steps = [parse_step(s) for s in steps]
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise VirtualSpecError(f"seed is {seed!r}: expected a non-negative integer")
        self.seed = int(seed)

    def spec(self) -> dict:
        return {"seed": self.seed, "steps": [s.spec() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True)

    @classmethod
    def from_spec(cls, spec: dict) -> VirtualExperiment:
        if not isinstance(spec, dict) or "steps" not in spec:
            raise VirtualSpecError(f"experiment spec {spec!r}: expected a dict with 'steps' and 'seed'")
        return cls(spec["steps"], spec.get("seed"))

    @classmethod
    def from_json(cls, text: str) -> VirtualExperiment:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise VirtualSpecError(f"experiment spec is not JSON: {e}") from None
        return cls.from_spec(spec)

    def __call__(self, rec: xr.DataArray) -> xr.DataArray:
        return self.apply(rec)

    def apply(self, rec: xr.DataArray) -> xr.DataArray:
        """The recording as this experiment sees it (a new, valid recording)."""
        out = validate_recording(rec)
        previous = out.attrs.get(VIRTUAL_ATTR)
        children = np.random.SeedSequence(self.seed).spawn(max(len(self.steps), 1))
        for step, child in zip(self.steps, children):
            out = step.apply(out, np.random.default_rng(child))
        spec = self.spec()
        if previous:
            spec["previous"] = json.loads(previous)
        out = out.copy()
        out.attrs[VIRTUAL_ATTR] = json.dumps(spec, sort_keys=True)
        return out

    def samples(self, rec: xr.DataArray, n: int) -> list[xr.DataArray]:
        """``n`` independent draws: the same steps with seeds ``seed, seed + 1, ...``."""
        return [VirtualExperiment(self.steps, self.seed + i).apply(rec) for i in range(n)]

    def __repr__(self) -> str:
        return f"VirtualExperiment(steps={[s.spec() for s in self.steps]!r}, seed={self.seed})"


def virtual_spec(rec: xr.DataArray) -> dict | None:
    """The experiment description stored on a derived recording, or ``None``."""
    text = rec.attrs.get(VIRTUAL_ATTR)
    return json.loads(text) if text else None
