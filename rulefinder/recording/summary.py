"""What ``rulefinder inspect`` and the upload endpoint report about a recording."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import BaseModel, Field

from rulefinder.recording.model import areas_of


class AreaSummary(BaseModel):
    area: str
    units: int
    constant_units: int = Field(description="units whose responses never vary (silent or dead)")


class RecordingSummary(BaseModel):
    source: str
    sessions: int
    stimuli: int
    units: int
    areas: list[AreaSummary]
    area_order: list[str] | None
    nan_fraction: float
    session_time_min: float
    session_time_max: float
    has_performance: bool
    warnings: list[str] = Field(default_factory=list)


def summarize(rec: xr.DataArray, source: str = "<memory>", warnings: list[str] | None = None) -> RecordingSummary:
    values = rec.transpose("session", "stimulus", "unit").values
    area_labels = rec.coords["unit_area"].values
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(values, axis=(0, 1)) - np.nanmin(values, axis=(0, 1))
    constant = spread == 0
    notes = list(warnings or [])
    areas = []
    for area in areas_of(rec):
        mask = area_labels == area
        areas.append(AreaSummary(area=area, units=int(mask.sum()), constant_units=int(constant[mask].sum())))
    nan_fraction = float(np.isnan(values).mean())
    if nan_fraction > 0.5:
        notes.append(f"{source}: {nan_fraction:.0%} of the values are NaN")
    if constant.all():
        notes.append(f"{source}: every unit is constant; nothing about learning can be read from it")
    elif constant.any():
        notes.append(f"{source}: {int(constant.sum())} of {constant.size} units never vary")
    st = rec.coords["session_time"].values
    return RecordingSummary(
        source=source,
        sessions=rec.sizes["session"],
        stimuli=rec.sizes["stimulus"],
        units=rec.sizes["unit"],
        areas=areas,
        area_order=rec.attrs.get("area_order") or None,
        nan_fraction=nan_fraction,
        session_time_min=float(st.min()),
        session_time_max=float(st.max()),
        has_performance="performance" in rec.coords,
        warnings=notes,
    )
