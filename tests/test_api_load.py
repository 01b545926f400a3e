"""benchmarks/api_load.py against a real server process: a short run reports every field the
issue's load targets are judged on, including the RSS soak's mark and growth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_api_load_reports_targets_and_soak_fields():
    cmd = [sys.executable, "benchmarks/api_load.py", "--clients", "2", "--cycles", "30", "--duration", "240",
           "--warmup", "5", "--rss-mark", "10", "--rss-every", "10"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["errors"] == 0, r["first_errors"]
    assert r["cycles"] >= 30 and r["measured_cycles"] > 0
    for key in ("p50_ms", "p99_ms", "throughput_rps", "cpu_ms_per_request", "cpu_ms_per_cycle",
                "client_cpu_ms_per_cycle", "rss_mb_start", "rss_mb_end", "rss_mb_at_10", "rss_growth_mb"):
        assert isinstance(r[key], (int, float)), (key, r[key])
    assert set(r["phase_p50_ms"]) == {"upload", "predict", "poll", "delete"}
    assert [c for c, _ in r["rss_timeline_mb"]][:3] == [10, 20, 30]
    assert "cycle 10: server RSS" in out.stderr
