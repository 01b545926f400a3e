"""NWB files built with pynwb for the tests, beyond what ``write_nwb_sessions`` makes."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def nwb_file(
    path: Path,
    *,
    start: datetime | None = None,
    stimuli=(0, 1, 2),
    ophys: np.ndarray | None = None,
    units: list[list[float]] | None = None,
    unit_locations: list[str] | None = None,
    electrode_location: str | None = None,
    trials: bool = True,
    stimulus_column: bool = True,
) -> Path:
    """One session file: trials 2 s apart (1 s long) for ``stimuli``; optional imaging
    (``ophys`` (trials, rois), one sample per trial, in a DfOverF container) and/or a units
    table with ``units`` spike times (optionally with a ``location`` column or an electrode
    group)."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel

    nwb = NWBFile(
        session_description="test",
        identifier=str(uuid.uuid4()),
        session_start_time=start or datetime(2026, 3, 1, tzinfo=timezone.utc),
    )
    if trials:
        if stimulus_column:
            nwb.add_trial_column(name="stimulus_id", description="stimulus")
        for k, s in enumerate(stimuli):
            extra = {"stimulus_id": s} if stimulus_column else {}
            nwb.add_trial(start_time=2.0 * k, stop_time=2.0 * k + 1.0, **extra)
    if ophys is not None:
        device = nwb.create_device(name="scope")
        plane = nwb.create_imaging_plane(
            name="plane",
            optical_channel=OpticalChannel(name="ch", description="g", emission_lambda=510.0),
            imaging_rate=1.0,
            description="p",
            device=device,
            excitation_lambda=920.0,
            indicator="GCaMP",
            location="V1",
        )
        module = nwb.create_processing_module(name="ophys", description="ophys")
        seg = ImageSegmentation()
        module.add(seg)
        ps = seg.create_plane_segmentation(name="ps", description="p", imaging_plane=plane)
        for _ in range(ophys.shape[1]):
            ps.add_roi(pixel_mask=[(0, 0, 1.0)])
        region = ps.create_roi_table_region(region=list(range(ophys.shape[1])), description="r")
        dff = DfOverF()
        module.add(dff)
        dff.create_roi_response_series(
            name="rrs", data=ophys, rois=region, unit="a.u.", timestamps=2.0 * np.arange(ophys.shape[0]) + 0.5
        )
    if units is not None:
        if unit_locations is not None:
            nwb.add_unit_column(name="location", description="area")
        group = None
        if electrode_location is not None:
            dev = nwb.create_device(name="probe")
            group = nwb.create_electrode_group(
                name="shank0", description="s", location=electrode_location, device=dev
            )
        for i, spikes in enumerate(units):
            extra = {}
            if unit_locations is not None:
                extra["location"] = unit_locations[i]
            if group is not None:
                extra["electrode_group"] = group
            nwb.add_unit(spike_times=spikes, **extra)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb, cache_spec=False)
    return path
