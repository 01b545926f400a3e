"""Prediction speed: one 21 x 64 x 256 NPZ recording (sessions x stimuli x units, four areas of
64 units) from file to PredictionResult, on one core, and the time to load a model.

    .venv/bin/python benchmarks/predict.py [--model default] [--repeats 30]

Prints one JSON object: ms_per_recording (median of --repeats, load + predict, model already
loaded), ms_per_recording_p90, cpu_ms_per_recording (process CPU time: what one core spends,
less sensitive than wall time to other work on the machine), predict_only_ms (median, recording already in memory)
and its CPU time cpu_predict_only_ms, model_load_ms (median of 5 fresh loads: hash check, skops load), model_bytes,
open_set_reference (rows x dimensions of the unknown score's reference: bounded by the estimator's reference_size x
n_components; models trained before that hold every training row unprojected), page_faults_per_recording (minor
faults of load + predict: memory the C allocator got anew from the system; see RULEFINDER_ALLOCATOR_KEEP_MB).
Target: ms_per_recording <= 30.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core, as the target says

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rulefinder.classify.predict import predict_recordings  # noqa: E402
from rulefinder.classify.registry import get_registry  # noqa: E402
from rulefinder.recording import load_recording, make_recording, save_npz  # noqa: E402


def make_npz(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    s, k, n = 21, 64, 256
    drift = np.cumsum(rng.normal(scale=0.1, size=(s, 1, n)), axis=0)
    x = np.maximum(rng.normal(size=(1, k, n)) + drift * rng.normal(size=(1, k, n)), 0.0)
    areas = np.repeat(["V1", "V2", "V4", "IT"], n // 4)
    save_npz(make_recording(x, unit_area=areas, area_order=["V1", "V2", "V4", "IT"]), path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    registry = get_registry()
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        loads = []
        for _ in range(5):
            t = time.perf_counter()
            model = registry.load(args.model)
            loads.append((time.perf_counter() - t) * 1e3)
        path = Path(tmp) / "rec.npz"
        make_npz(path)
        predict_recordings([load_recording(path)], model=model)  # warm-up (imports, caches)
        total, only, cpu, cpu_only = [], [], [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(args.repeats):
            c = time.process_time()
            t = time.perf_counter()
            rec = load_recording(path)
            c1 = time.process_time()
            t1 = time.perf_counter()
            predict_recordings([rec], model=model)
            t2 = time.perf_counter()
            c2 = time.process_time()
            cpu.append((c2 - c) * 1e3)
            cpu_only.append((c2 - c1) * 1e3)
            total.append((t2 - t) * 1e3)
            only.append((t2 - t1) * 1e3)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.repeats
    print(
        json.dumps(
            {
                "benchmark": "predict",
                "model": {"name": model.name, "sha256": model.sha256},
                "recording": "21 sessions x 64 stimuli x 256 units (4 areas), NPZ",
                "threads": 1,
                "repeats": args.repeats,
                "ms_per_recording": round(float(np.median(total)), 2),
                "ms_per_recording_p90": round(float(np.percentile(total, 90)), 2),
                "cpu_ms_per_recording": round(float(np.median(cpu)), 2),
                "predict_only_ms": round(float(np.median(only)), 2),
                "cpu_predict_only_ms": round(float(np.median(cpu_only)), 2),
                "model_load_ms": round(float(np.median(loads)), 1),
                "model_bytes": sum(p.stat().st_size for p in model.path.iterdir()),
                "open_set_reference": list(getattr(model.estimator, "reference_", np.empty((0, 0))).shape),
                "page_faults_per_recording": round(faults, 1),
                "target_ms_per_recording": 30,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
