"""What reading NWB session files in the reader process costs, next to reading in-process.

Loads the shipped ``examples/ophys_mouse`` (6 session files) and ``examples/ephys_units`` (5)
with ``rulefinder.load_recording``, each mode in a fresh interpreter: ``in_process``
(``RULEFINDER_NWB_READ_TIMEOUT_S=0``) and ``reader`` (the default: a reader process with a
time limit per file, ``rulefinder/recording/nwb_reader.py``). Reports CPU seconds of the
first load (which pays the import of pynwb, or the start of the reader) and the mean of the
later loads per session file, the caller's and the reader's CPU together (the reader's read
from /proc: Linux only). The modes alternate for ``--rounds`` rounds; medians are printed, as
JSON, with the ratio reader / in-process.

    .venv/bin/python benchmarks/nwb_read_cost.py [--repeats 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from rulefinder.recording import load_recording, nwb_reader

def reader_cpu():
    r = nwb_reader._reader
    if r is None:
        return 0.0
    fields = open(f"/proc/{r.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def cpu():
    return time.process_time() + reader_cpu()

out = {}
repeats = int(sys.argv[2])
for name in ("ophys_mouse", "ephys_units"):
    folder = os.path.join(sys.argv[1], "examples", name)
    files = len([f for f in os.listdir(folder) if f.endswith(".nwb")])
    t = cpu(); load_recording(folder); first = cpu() - t
    t = cpu()
    for _ in range(repeats):
        load_recording(folder)
    out[name] = {"files": files, "first_load_cpu_s": round(first, 3),
                 "later_per_file_cpu_ms": round(1000 * (cpu() - t) / repeats / files, 1)}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="later loads per recording and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"in_process": [], "reader": []}
    for _ in range(args.rounds):  # alternating: the machine's load drifts
        for mode, timeout in (("in_process", "0"), ("reader", "30")):
            env = dict(os.environ, RULEFINDER_NWB_READ_TIMEOUT_S=timeout)
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(ROOT), str(args.repeats)],
                env=env, capture_output=True, text=True, check=True,
            )
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result: dict = {"rounds": args.rounds, "repeats": args.repeats}
    for mode, rs in runs.items():
        result[mode] = {
            name: {key: statistics.median(r[name][key] for r in rs) for key in rs[0][name]} for name in rs[0]
        }
    result["ratio_reader_to_in_process"] = {
        name: {
            key: round(result["reader"][name][key] / result["in_process"][name][key], 2)
            for key in ("first_load_cpu_s", "later_per_file_cpu_ms")
        }
        for name in result["reader"]
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
