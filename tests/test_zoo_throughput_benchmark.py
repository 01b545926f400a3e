"""benchmarks/zoo_throughput.py: its fixed mix and its JSON (the numbers live in docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training_zoo.rules import all_rules

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_throughput.py"


def _module():
    spec = importlib.util.spec_from_file_location("zoo_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mix_has_every_rule_on_every_architecture_family_it_supports():
    shards = _module().mix_shards(networks=4, length_scale=0.1)
    cells = {(s["rule"], s["arch"]["family"]) for s in shards}
    want = {(r, f) for r, cls in all_rules().items() for f in cls.supports}
    assert cells == want
    assert all(len(s["lrs"]) == 4 for s in shards)
    for s in shards:  # each rule's variants taken in turn over its families
        assert s["variant"] in all_rules()[s["rule"]].variants


def test_default_variants_mix_covers_the_same_cells_with_each_rules_default():
    mod = _module()
    shards = mod.mix_shards(networks=2, length_scale=0.1, default_variants=True)
    assert {(s["rule"], s["arch"]["family"]) for s in shards} == {
        (s["rule"], s["arch"]["family"]) for s in mod.mix_shards(networks=2, length_scale=0.1)}
    assert {s["variant"] for s in shards} == {"default"}


@pytest.mark.slow
def test_benchmark_prints_one_json_object_with_the_time_breakdown():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--networks", "1", "--length-scale", "0.002",
         "--rules", "backprop"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    report = json.loads(out.stdout)
    assert report["networks"] == 3 and report["networks_per_min"] > 0
    parts = report["where_the_time_goes_s"]
    assert set(parts) == {"train_steps", "evaluation", "recording", "store", "other"}
    assert sum(parts.values()) == pytest.approx(report["seconds"], rel=0.05, abs=0.05)
    assert set(report["where_the_cpu_goes_s"]) == set(parts)
    assert report["where_the_cpu_goes_s"]["train_steps"] > 0
