"""Real OS processes writing into one store: concurrent shard writers, and a writer killed mid-shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tests.test_store import assert_same_network
from tests.test_store_records import make_shard

from rulefinder.store import ZooStore, store_info

ROOT = Path(__file__).resolve().parents[1]

# A writer process: says it is ready, waits for the go file (so that writers really overlap),
# then writes its shards, sleeping `delay` seconds after each network, and prints when it
# started and ended.
WRITER = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from tests.test_store_records import make_shard
from rulefinder.store import ZooStore

url, go, plan, delay = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
store = ZooStore.open(url, mode="r+")
open(f"{go}.ready.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
start = time.time()
for shard_id, n, seed0 in plan:
    store.write_shard(
        make_shard(shard_id, n, seed0=seed0), shard_id,
        on_network=lambda i, nid: time.sleep(delay),
    )
print(json.dumps({"start": start, "end": time.time()}), flush=True)
"""


def start_writer(url: str, go: Path, plan: list, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(go), json.dumps(plan), str(delay)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_write_shards_concurrently_nothing_lost_or_duplicated(tmp_path):
    url = str(tmp_path / "zoo.zarr")
    # Consolidated before the writers start: both drop the stale listing at once.
    ZooStore.create(url).consolidate()
    go = tmp_path / "go"
    plans = [
        [["p0s0", 4, 0], ["p0s1", 4, 10], ["p0s2", 4, 20]],
        [["p1s0", 4, 100], ["p1s1", 4, 110], ["p1s2", 4, 120]],
    ]
    writers = [start_writer(url, go, plan, delay=0.05) for plan in plans]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < len(writers):  # both imported and open
        assert time.monotonic() < deadline, "writers did not start"
        assert all(w.poll() is None for w in writers), [w.stderr.read() for w in writers]
        time.sleep(0.02)
    go.touch()
    windows = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        windows.append(json.loads(out.strip().splitlines()[-1]))
    # The two writers were at work at the same time.
    assert max(w["start"] for w in windows) < min(w["end"] for w in windows)

    store = ZooStore.open(url)
    table = store.networks()
    expected = {
        r.network_id: r
        for plan in plans
        for shard_id, n, seed0 in plan
        for r in make_shard(shard_id, n, seed0=seed0)
    }
    ids = table["network"].values.tolist()
    assert len(ids) == len(set(ids)) == len(expected) == 24
    assert set(ids) == set(expected)
    assert table["complete"].values.all()
    assert store.incomplete() == []
    for network_id, original in expected.items():
        assert_same_network(store.record(network_id), original)
    store_rw = ZooStore.open(url, mode="r+")
    store_rw.consolidate()
    assert store_info(url).complete == 24


def test_writer_killed_mid_shard_leaves_a_readable_store_that_lists_incomplete_networks(tmp_path):
    url = str(tmp_path / "zoo.zarr")
    ZooStore.create(url).write_shard(make_shard("done", 3, seed0=500), "done")
    go = tmp_path / "go"
    go.touch()
    writer = start_writer(url, go, [["slow", 30, 0]], delay=0.2)
    try:
        deadline = time.monotonic() + 90
        while True:  # read the store while it is being written, until part of the shard is down
            assert time.monotonic() < deadline, "the writer never completed 3 networks"
            assert writer.poll() is None, writer.stderr.read()
            listing = ZooStore.open(url).networks()
            if "slow" in set(listing["shard"].values) and listing["complete"].values.sum() >= 3 + 3:
                break
            time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    store = ZooStore.open(url)
    table = store.networks()
    assert table.sizes["network"] == 33  # every network of the killed shard is listed
    incomplete = store.incomplete()
    assert incomplete and all(i.startswith("slow/") for i in incomplete)
    complete = [i for i in table["network"].values.tolist() if i not in incomplete]
    assert len(complete) >= 6
    # Complete means written: the completed prefix of the shard reads back exactly.
    originals = {r.network_id: r for r in make_shard("slow", 30) + make_shard("done", 3, seed0=500)}
    for network_id in complete:
        assert_same_network(store.record(network_id), originals[network_id])
    done_slow = sorted(int(i.split("/")[1]) for i in complete if i.startswith("slow/"))
    assert done_slow == list(range(len(done_slow)))  # written in order, nothing skipped
    info = store_info(url)
    assert (info.networks, info.complete, info.incomplete) == (33, len(complete), len(incomplete))
    assert info.incomplete_networks == incomplete
    # Recovery: the shard is written again by a new writer and the store is whole.
    rewriter = ZooStore.open(url, mode="r+")
    rewriter.write_shard(make_shard("slow", 30), "slow", overwrite=True)
    rewriter.consolidate()
    healed = ZooStore.open(url)
    assert healed.incomplete() == []
    assert np.all(healed.networks()["complete"].values)
