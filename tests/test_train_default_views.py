"""benchmarks/train_default.py's stimulus-subset views and the training ranges it writes on the
card (what ``predict``'s training-range warnings read)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rulefinder.virtual import VirtualExperiment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_default as td  # noqa: E402

RECORDING = {"probes": 64, "checkpoints": 21, "units_per_layer": 64}


def test_stimuli_view_is_a_valid_experiment():
    assert td.stimuli_view(24) == [{"op": "keep_stimuli", "n": 24}]
    with_offset = td.stimuli_view(np.int64(16), 0.5)
    assert with_offset[1] == {"op": "scale_offset", "offset": 0.5, "relative": True}
    assert isinstance(with_offset[0]["n"], int)  # JSON-able, so the cache key and the card can name it
    VirtualExperiment(with_offset, seed=0)  # parses


def test_training_ranges_span_full_recordings_and_views():
    views = [
        [],  # a full recording: the spec's 64 probes and 21 checkpoints, output area present
        [{"op": "keep_units", "n": 10, "per_area": True}, {"op": "keep_sessions", "n": 3, "mode": "even"}],
        [td.NO_OUTPUT, *td.stimuli_view(16)],
        [{"op": "keep_sessions", "n": 40, "mode": "even"}],  # more than recorded: keeps all 21
    ]
    r = td.training_ranges(views, np.array([10, 64, 30]), RECORDING)
    assert r.stimuli == (16, 64) and r.sessions == (3, 21) and r.units_per_area == (10, 64)
    assert r.output_area == [False, True]
    only_full = td.training_ranges([[]], np.array([64]), RECORDING)
    assert only_full.stimuli == (64, 64) and only_full.output_area == [True]


def test_training_ranges_without_a_spec_leave_counts_unknown():
    r = td.training_ranges([[], td.stimuli_view(16)], np.array([5, 7]), None)
    assert r.stimuli is None and r.sessions is None and r.units_per_area == (5, 7)
