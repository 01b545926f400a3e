"""Feature-extraction speed on zoo-sized recordings; prints one JSON object.

    .venv/bin/python benchmarks/features.py [--recordings 256] [--threads 2] [--areas 1]

Recordings are 21 sessions x 64 stimuli x 256 units (float32, rectified Gaussian like ReLU
activations), featurised through the batched path ``FeatureExtractor.transform_block``.
``plain_pass_recordings_per_s`` is one plain pass over the same block (a float64-accumulated
sum, split over the same threads): the memory-bandwidth ceiling the extraction is measured
against. ``per_recording_path_recordings_per_s`` is the one-recording-at-a-time path
(``transform`` on a list of DataArrays) on a subset, single thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recordings", type=int, default=256)
    ap.add_argument("--sessions", type=int, default=21)
    ap.add_argument("--stimuli", type=int, default=64)
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--areas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from rulefinder.features import FeatureExtractor
    from rulefinder.recording import make_recording

    r, s, k, n = args.recordings, args.sessions, args.stimuli, args.units
    rng = np.random.default_rng(0)
    block = np.maximum(rng.standard_normal((r, s, k, n), dtype=np.float32), 0.0)
    unit_area = np.repeat([f"layer{i}" for i in range(args.areas)], -(-n // args.areas))[:n]
    area_order = [f"layer{i}" for i in range(args.areas)]
    fe = FeatureExtractor(n_threads=args.threads).fit()

    def extract():
        return fe.transform_block(block, np.arange(s), unit_area, area_order)

    extract()  # warm up allocations and thread pool
    c0 = time.process_time()
    t_feat = _best(extract, args.repeats)
    cpu_feat = (time.process_time() - c0) / args.repeats

    chunks = np.array_split(block, args.threads * 4)
    pool = ThreadPoolExecutor(args.threads)

    def plain():
        return sum(pool.map(lambda c: float(c.sum(dtype=np.float64)), chunks))

    plain()
    t_plain = _best(plain, args.repeats)

    n_single = min(16, r)
    recs = [
        make_recording(block[i], session_time=np.arange(s), unit_area=unit_area, area_order=area_order)
        for i in range(n_single)
    ]
    single = FeatureExtractor(n_threads=1).fit()
    t_single = _best(lambda: single.transform(recs), 1)

    out = {
        "benchmark": "features",
        "recordings": r,
        "shape": {"session": s, "stimulus": k, "unit": n, "areas": args.areas},
        "threads": args.threads,
        "n_features": len(fe.feature_names_),
        "recordings_per_s": r / t_feat,
        "plain_pass_recordings_per_s": r / t_plain,
        "fraction_of_plain_pass": t_plain / t_feat,
        # CPU time of this process per recording (all threads): on a machine shared with other
        # jobs, wall-clock rates understate what idle cores give (about threads / cpu time).
        "cpu_ms_per_recording": 1e3 * cpu_feat / r,
        "idle_cores_estimate_recordings_per_s": args.threads * r / cpu_feat,
        "per_recording_path_recordings_per_s": n_single / t_single,
        "megabytes_per_recording": block[0].nbytes / 1e6,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
