"""Load on a real ``rulefinder serve`` process on 127.0.0.1, from a load generator in this process.

One cycle = upload a distinct 21 x 64 x 256 float32 ``.npz``, queue a prediction, poll it to its
result (long poll, ``?wait=30``, as the client does), delete the recording. ``--clients``
threads run cycles back to back for ``--duration`` seconds or ``--cycles`` cycles, whichever ends first (always bounded). The rate limit is set far
above the load. Prints one JSON object:

    p50_ms, p99_ms            cycle latency (phase_p50_ms: upload, predict, poll, delete)
    throughput_rps            cycles per second (requests per second: requests_per_s)
    cpu_ms_per_request        server CPU (user + system) per HTTP request; cpu_ms_per_cycle too,
                              and client_cpu_ms_per_cycle for the load generator on the same cores.
                              "Server" is the server process and its worker processes together;
                              server_main_cpu_ms_per_cycle and worker_cpu_ms_per_cycle split it,
                              server_cpu_cores is how many cores it kept busy
    errors                    failed requests or cycles
    rss_mb_start, rss_mb_end  server RSS (with its worker processes) at cycle --rss-from (or
                              after warm-up) and at the end; rss_mb_at_500 and rss_growth_mb from
                              cycle --rss-mark (500) to the end, rss_timeline_mb every --rss-every
                              cycles, rss_mb_by_process_end, server threads and open files at the
                              mark and the end (leak checks)

``--pool threads,processes`` (with ``--repeat K``) runs one server per pool in turn, K rounds,
in one sitting, and prints {"runs": [...], "median_by_pool": {...}, "processes_over_threads":
{...}}: on a shared machine only such side-by-side ratios mean much.

Targets (issue #11, 2 cores): 1 client p50 <= 100 ms; 16 clients >= 30 cycles/s, 0 errors,
p99 <= 2 s; RSS growth <= 50 MB from cycle 500 to 10,000.

Usage:
    python benchmarks/api_load.py --clients 1 --duration 30
    python benchmarks/api_load.py --clients 16 --duration 60
    python benchmarks/api_load.py --clients 16 --duration 40 --pool threads,processes --repeat 2
    python benchmarks/api_load.py --clients 16 --cycles 10000 --duration 900   # RSS soak
Needs a model: the packaged ``default``, ``--model-dir DIR`` (a registry directory, e.g.
RULEFINDER_DATA_DIR/models), or else the tiny model of the tests is fitted first (said so in the
output as ``model``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
SHAPE = (21, 64, 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_models(data_dir: Path, model_dir: Path | None) -> str:
    sys.path.insert(0, str(REPO))
    from rulefinder.classify.registry import ModelRegistry

    if model_dir is not None:
        shutil.copytree(model_dir, data_dir / "models", dirs_exist_ok=True)
        return f"default from {model_dir}"
    if "default" in ModelRegistry(data_dir=data_dir / "models").names():
        return "packaged default"
    from tests.api_fixtures import register_tiny_model

    register_tiny_model(data_dir / "models")
    return "tiny test model (no default model installed)"


class Recordings:
    """Distinct .npz payloads without paying for a new random array each cycle."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        t = np.linspace(0, 1, SHAPE[0])[:, None, None]
        base = rng.normal(size=SHAPE[1:]).astype(np.float32)
        drift = rng.normal(size=SHAPE[1:]).astype(np.float32)
        self.resp = (base[None] + t * drift[None]).astype(np.float32)
        self.area = np.array(["V1"] * 128 + ["V2"] * 128)
        self.order = np.array(["V1", "V2"])
        self.lock = threading.Lock()
        self.n = 0

    def next(self) -> bytes:
        with self.lock:
            self.n += 1
            n = self.n
        resp = self.resp.copy()
        resp[0, 0, 0] += n * 1e-3  # distinct bytes, so nothing is de-duplicated
        buf = io.BytesIO()
        np.savez(buf, responses=resp, unit_area=self.area, area_order=self.order)
        return buf.getvalue()


def run(args, pool: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rulefinder-load-"))
    data_dir = work / "data"
    data_dir.mkdir()
    model = _prepare_models(data_dir, Path(args.model_dir) if args.model_dir else None)
    port = _free_port()
    env = dict(
        os.environ,
        RULEFINDER_DATA_DIR=str(data_dir),
        RULEFINDER_RATE_LIMIT_PER_MINUTE="1e9",
        RULEFINDER_RETENTION_DAYS="0",
        RULEFINDER_WORKERS=str(args.workers),
        RULEFINDER_WORKER_POOL=pool,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.pop("RULEFINDER_AUTH", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "rulefinder", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    proc = psutil.Process(server.pid)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 120 s")
            time.sleep(0.2)
        return {"pool": pool, **_drive(args, url, proc, model)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


PHASES = ("upload", "predict", "poll", "delete")


def _drive(args, url: str, proc: psutil.Process, model: str) -> dict:
    recordings = Recordings()
    latencies: list[float] = []
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    errors: list[str] = []
    lock = threading.Lock()
    counters = {"cycles": 0, "requests": 0}
    marks: dict = {}
    timeline: list[list[float]] = []
    stop = threading.Event()
    me = psutil.Process()

    def tree() -> list[psutil.Process]:
        return [proc, *proc.children(recursive=True)]

    def rss(processes: list[psutil.Process] | None = None) -> int:
        total = 0
        for p in processes or tree():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:  # a worker replaced meanwhile
                pass
        return total

    def server_state() -> dict:
        return {"rss": rss(), "threads": proc.num_threads(), "fds": proc.num_fds()}

    def cpu() -> tuple[float, float]:
        """(server process, its workers), user + system seconds; ended workers count once reaped."""
        own = proc.cpu_times()
        workers = own.children_user + own.children_system
        for p in proc.children(recursive=True):
            try:
                workers += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return own.user + own.system, workers

    def one_cycle(http: httpx.Client, times: dict, patience: float = 120) -> int:
        n = 0
        t = time.perf_counter()
        r = http.post("/v1/recordings", files=[("files", ("load.npz", recordings.next(), "application/octet-stream"))])
        n += 1
        r.raise_for_status()
        rid = r.json()["id"]
        t, times["upload"] = time.perf_counter(), time.perf_counter() - t
        r = http.post("/v1/predictions", json={"recording_ids": [rid]})
        n += 1
        r.raise_for_status()
        pid = r.json()["id"]
        t, times["predict"] = time.perf_counter(), time.perf_counter() - t
        t_end = time.monotonic() + patience
        while True:  # long poll, as the client does
            r = http.get(f"/v1/predictions/{pid}", params={"wait": 30})
            n += 1
            r.raise_for_status()
            status = r.json()["status"]
            if status == "succeeded":
                break
            if status == "failed" or time.monotonic() > t_end:
                raise RuntimeError(f"prediction {status}: {r.json().get('error')}")
        t, times["poll"] = time.perf_counter(), time.perf_counter() - t
        r = http.delete(f"/v1/recordings/{rid}")
        n += 1
        r.raise_for_status()
        times["delete"] = time.perf_counter() - t
        return n

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                times: dict = {}
                try:
                    n = one_cycle(http, times)
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    counters["cycles"] += 1
                    counters["requests"] += n
                    cycle = counters["cycles"]
                    if cycle > args.warmup:
                        latencies.append(dt)
                        for k in PHASES:
                            phases[k].append(times[k])
                    if cycle == max(args.warmup, args.rss_from) and "start" not in marks:
                        marks["start"] = server_state()
                        marks["cpu0"] = cpu()
                        marks["client_cpu0"] = sum(me.cpu_times()[:2])
                        marks["req0"] = counters["requests"]
                        marks["t0"] = time.monotonic()
                        marks["c0"] = cycle
                    if cycle == args.rss_mark:
                        marks["mark"] = server_state()
                    if cycle % args.rss_every == 0:
                        timeline.append([cycle, round(rss() / 2**20, 1)])
                        # Progress for long soaks (stdout stays one JSON object).
                        print(f"cycle {cycle}: server RSS {timeline[-1][1]} MB, {len(errors)} errors", file=sys.stderr, flush=True)
                    if cycle >= args.cycles:
                        stop.set()

    def warm() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            one_cycle(http, {}, patience=900)  # a worker's start-up is slow on a loaded machine

    # One cycle per worker at once, so every worker (process) has loaded the model before the
    # measurement: not part of it.
    warmers = [threading.Thread(target=warm) for _ in range(args.workers)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.clients)]
    load_start = os.getloadavg()[0]
    rss_max = rss()
    t_start = time.monotonic()
    for t in threads:
        t.start()
    while not stop.is_set() and time.monotonic() - t_start < args.duration:
        time.sleep(0.25)
        rss_max = max(rss_max, rss())
    stop.set()
    for t in threads:
        t.join(timeout=130)
    t_end = time.monotonic()
    end = server_state()
    end["by_process"] = {("server" if p.pid == proc.pid else f"worker {p.pid}"): round(rss([p]) / 2**20, 1) for p in tree()}
    cpu_end = cpu()
    client_cpu_end = sum(me.cpu_times()[:2])
    if "start" not in marks:  # too short a run to pass the warm-up
        raise RuntimeError(f"only {counters['cycles']} cycles in {args.duration} s: raise --duration; errors {errors[:3]}")
    measured_cycles = counters["cycles"] - marks["c0"]
    measured_requests = counters["requests"] - marks["req0"]
    elapsed = t_end - marks["t0"]
    main_cpu = cpu_end[0] - marks["cpu0"][0]
    worker_cpu = cpu_end[1] - marks["cpu0"][1]
    server_cpu = main_cpu + worker_cpu

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(np.array(values) * 1000, q)), 1) if values else float("nan")

    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    mark = marks.get("mark")
    return {
        "benchmark": "api_load",
        "clients": args.clients,
        "workers": args.workers,
        "model": model,
        "cycles": counters["cycles"],
        "measured_cycles": measured_cycles,
        "warmup_cycles": marks["c0"],
        "duration_s": round(t_end - t_start, 1),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "phase_p50_ms": {k: pct(v, 50) for k, v in phases.items()},
        "throughput_rps": round(measured_cycles / elapsed, 2),
        "requests_per_s": round(measured_requests / elapsed, 1),
        "cpu_ms_per_request": round(1000 * server_cpu / max(1, measured_requests), 2),
        "cpu_ms_per_cycle": round(1000 * server_cpu / max(1, measured_cycles), 2),
        "server_main_cpu_ms_per_cycle": round(1000 * main_cpu / max(1, measured_cycles), 2),
        "worker_cpu_ms_per_cycle": round(1000 * worker_cpu / max(1, measured_cycles), 2),
        # The load generator runs on the same cores: its CPU is part of what 2 cores must carry.
        "client_cpu_ms_per_cycle": round(1000 * (client_cpu_end - marks["client_cpu0"]) / max(1, measured_cycles), 2),
        "server_cpu_cores": round(server_cpu / elapsed, 2),
        "errors": len(errors),
        "first_errors": errors[:3],
        "rss_mb_start": mb(marks["start"]["rss"]),
        "rss_mb_end": mb(end["rss"]),
        "rss_mb_max": mb(max(rss_max, end["rss"])),
        "rss_mb_by_process_end": end["by_process"],
        "rss_measured_from_cycle": marks["c0"],
        f"rss_mb_at_{args.rss_mark}": mb(mark["rss"]) if mark else None,
        "rss_growth_mb": mb(end["rss"] - mark["rss"]) if mark else None,
        "rss_growth_from_cycle": args.rss_mark if mark else None,
        "rss_timeline_mb": timeline,
        "server_threads": [mark["threads"] if mark else None, end["threads"]],
        "server_open_fds": [mark["fds"] if mark else None, end["fds"]],
        "cpu_count": os.cpu_count(),
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--duration", type=float, default=30.0, help="Wall-clock bound in seconds.")
    p.add_argument("--cycles", type=int, default=10**9, help="Stop after this many cycles.")
    p.add_argument("--warmup", type=int, default=20, help="Cycles left out of latency and throughput.")
    p.add_argument("--rss-from", type=int, default=0, help="Cycle at which rss_mb_start is taken (default: after warm-up).")
    p.add_argument("--rss-mark", type=int, default=500, help="Cycle from which rss_growth_mb is counted (rss_mb_at_<N>).")
    p.add_argument("--rss-every", type=int, default=1000, help="Cycles between rss_timeline_mb samples.")
    p.add_argument("--workers", type=int, default=2, help="Server prediction workers (RULEFINDER_WORKERS).")
    p.add_argument("--pool", default="processes", help="RULEFINDER_WORKER_POOL: processes, threads, or both comma-separated (side by side).")
    p.add_argument("--repeat", type=int, default=1, help="Rounds over --pool (each run gets --duration).")
    p.add_argument("--model-dir", default=None, help="Registry directory holding a 'default' model to serve.")
    args = p.parse_args()
    if args.duration > 3600:
        p.error("--duration is bounded at 3600 s")
    pools = [x.strip() for x in args.pool.split(",") if x.strip()]
    if not pools or set(pools) - {"processes", "threads"} or args.repeat < 1:
        p.error(f"--pool {args.pool!r} --repeat {args.repeat}: expected processes and/or threads, repeat >= 1")
    runs = [run(args, pool) for _ in range(args.repeat) for pool in pools]
    print(json.dumps(runs[0] if len(runs) == 1 else compare(runs)))


SUMMARY = ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_cycle", "server_main_cpu_ms_per_cycle",
           "worker_cpu_ms_per_cycle", "server_cpu_cores", "rss_mb_end", "errors")


def compare(runs: list[dict]) -> dict:
    """Median per pool of the runs' headline fields, and processes / threads where both ran."""
    by_pool: dict[str, dict] = {}
    for pool in dict.fromkeys(r["pool"] for r in runs):
        mine = [r for r in runs if r["pool"] == pool]
        by_pool[pool] = {k: float(np.median([r[k] for r in mine])) for k in SUMMARY} | {"runs": len(mine)}
    out = {"benchmark": "api_load", "clients": runs[0]["clients"], "runs": runs, "median_by_pool": by_pool}
    if {"processes", "threads"} <= set(by_pool):
        t, pr = by_pool["threads"], by_pool["processes"]
        out["processes_over_threads"] = {k: round(pr[k] / t[k], 3) if t[k] else None for k in SUMMARY if k != "errors"}
    return out


if __name__ == "__main__":
    main()
