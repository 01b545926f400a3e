"""Recordings: the in-memory model and the loaders of the three upload formats."""

from rulefinder.recording.errors import RecordingError, RecordingWarning
from rulefinder.recording.loader import (
    format_of,
    group_inputs,
    load_recording,
    load_recording_with_warnings,
)
from rulefinder.recording.model import DIMS, areas_of, make_recording, validate_recording
from rulefinder.recording.npz import load_npz, save_npz
from rulefinder.recording.nwb import load_nwb, write_nwb_sessions
from rulefinder.recording.summary import RecordingSummary, summarize
from rulefinder.recording.zarr_zip import load_zarr_zip, save_zarr_zip

__all__ = [
    "DIMS",
    "RecordingError",
    "RecordingSummary",
    "RecordingWarning",
    "areas_of",
    "format_of",
    "group_inputs",
    "load_npz",
    "load_nwb",
    "load_recording",
    "load_recording_with_warnings",
    "load_zarr_zip",
    "make_recording",
    "save_npz",
    "save_zarr_zip",
    "summarize",
    "validate_recording",
    "write_nwb_sessions",
]
