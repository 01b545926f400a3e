"""Damaged copies of the shipped examples, loaded as a new user would: what happens?

The experiment of issue #13: 120 NPZ, 120 ``.zarr.zip`` and 60 NWB directories (30 of
``ophys_mouse``, 30 of ``ephys_units``, one session file damaged in each), damaged by bit
flips, truncations, zeroed and duplicated byte spans (``tests/mutations.py``, kinds in turn,
fixed seed). Each case is loaded with ``rulefinder.load_recording`` (default settings, as a
user would) in a forked child with a time limit, so that a loader that never returns is
counted, not waited for. NWB reads carry their own limit (``RULEFINDER_NWB_READ_TIMEOUT_S``,
default 30 s, below ``--timeout``): libhdf5 can loop forever on a damaged file, and the
loader then kills its reader process and raises ``RecordingError``. Prints JSON: outcome
counts per format (``loaded``, ``RecordingError``, ``hang``, or the name of any other
exception).

    .venv/bin/python benchmarks/damaged_recordings.py [--seed 0] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rulefinder.recording import RecordingError, load_recording  # noqa: E402
from tests.mutations import KINDS, damaged_copies  # noqa: E402

EXAMPLES = ROOT / "examples"


def _outcome_in_child(target: Path, timeout: float) -> str:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_recording(target)
            out = "loaded"
        except RecordingError:
            out = "RecordingError"
        except BaseException as exc:  # noqa: BLE001 - the point is to count them
            out = f"{type(exc).__module__}.{type(exc).__name__}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hang"
        time.sleep(0.01)
    with os.fdopen(read, "rb") as f:
        return f.read().decode() or "child died"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--npz", type=int, default=120)
    ap.add_argument("--zarr", type=int, default=120)
    ap.add_argument("--nwb", type=int, default=60)
    args = ap.parse_args()
    counts: dict[str, Counter] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rf-damaged-") as tmp:
        tmp = Path(tmp)
        for fmt, src, n in (
            ("npz", EXAMPLES / "mlp_backprop.npz", args.npz),
            ("zarr.zip", EXAMPLES / "mlp_backprop.zarr.zip", args.zarr),
        ):
            c = counts.setdefault(fmt, Counter())
            for _, blob, _ in damaged_copies(src.read_bytes(), n=n, seed=args.seed, kinds=KINDS):
                target = tmp / f"damaged.{fmt}"
                target.write_bytes(blob)
                c[_outcome_in_child(target, args.timeout)] += 1
        c = counts.setdefault("nwb", Counter())
        for k in range(args.nwb):
            files = sorted((EXAMPLES / ("ophys_mouse" if k % 2 == 0 else "ephys_units")).glob("*.nwb"))
            victim = files[(k // 2) % len(files)]
            _, blob, _ = list(damaged_copies(victim.read_bytes(), n=k + 1, seed=args.seed + 1, kinds=KINDS))[k]
            folder = tmp / f"nwb{k}"
            folder.mkdir()
            for f in files:
                (folder / f.name).write_bytes(blob if f == victim else f.read_bytes())
            c[_outcome_in_child(folder, args.timeout)] += 1
            shutil.rmtree(folder)
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(
        json.dumps(
            {
                "cases": sum(total.values()),
                "seed": args.seed,
                "outcomes": dict(total),
                "by_format": {fmt: dict(c) for fmt, c in counts.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
