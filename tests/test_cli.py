"""The command line on the shipped examples, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rulefinder.recording import load_recording

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "rulefinder.cli"]


def run(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_inspect_json_covers_every_example_format():
    out = run(
        "inspect",
        EXAMPLES / "mlp_backprop.npz",
        EXAMPLES / "mlp_backprop.zarr.zip",
        EXAMPLES / "ophys_mouse",
        EXAMPLES / "ephys_units",
        "--json",
    )
    summaries = json.loads(out.stdout)
    assert [s["source"].split("/")[-1] for s in summaries] == [
        "mlp_backprop.npz",
        "mlp_backprop.zarr.zip",
        "ophys_mouse",
        "ephys_units",
    ]
    npz, zarr, ophys, units = summaries
    assert npz == {**zarr, "source": npz["source"]}
    assert npz["area_order"] == ["hidden1", "hidden2"]
    assert {a["area"]: a["units"] for a in ophys["areas"]} == {"V1": 24, "LM": 16}
    assert ophys["nan_fraction"] > 0  # the unit lost on the last day
    assert ophys["session_time_max"] == pytest.approx(9.0)
    assert units["has_performance"] is False


def test_inspect_text_and_nwb_files_given_together():
    files = sorted((EXAMPLES / "ophys_mouse").glob("*.nwb"))
    out = run("inspect", *files)
    assert "sessions 6" in out.stdout and "V1" in out.stdout


def test_inspect_reports_a_bad_file_and_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, responses=np.zeros((21, 64)))
    proc = run("inspect", bad, EXAMPLES / "mlp_backprop.npz", "--json", check=False)
    assert proc.returncode == 2  # a recording that cannot be read: exit 2, one error line (issue #13)
    first, second = json.loads(proc.stdout)
    assert "responses has shape (21, 64): expected 3 dimensions" in first["error"]
    assert second["sessions"] == 11


def test_mixing_nwb_with_other_paths_is_refused():
    proc = run("inspect", next((EXAMPLES / "ophys_mouse").glob("*.nwb")), EXAMPLES / "mlp_backprop.npz", check=False)
    assert proc.returncode == 2
    assert "given together with other recordings" in proc.stderr


def test_reduce_writes_npz_that_loads_like_the_nwb(tmp_path):
    out = tmp_path / "mouse.npz"
    run("reduce", EXAMPLES / "ophys_mouse", "-o", out, "--area-order", "V1,LM")
    reduced = load_recording(out)
    direct = load_recording(EXAMPLES / "ophys_mouse", area_order=["V1", "LM"])
    np.testing.assert_array_equal(reduced.values, direct.values)
    assert reduced.attrs["area_order"] == ["V1", "LM"]


def test_every_command_has_help():
    for cmd in (["--help"], ["inspect", "--help"], ["reduce", "--help"], ["rules", "--help"], ["store", "info", "--help"]):
        assert "Usage" in run(*cmd).stdout
