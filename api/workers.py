"""Prediction worker processes: each loads the model once and predicts one job at a time.

The server's job threads (:mod:`api.jobs`) hand a job to an idle worker as blob paths and ids,
never arrays: the worker parses the stored bytes with the recording loaders itself and answers
with the result's JSON. Nothing crosses the pipes as a pickle.

The workers are plain subprocesses (``python -m api.workers``), not :mod:`multiprocessing`:
spawn and forkserver re-import the caller's ``__main__``, and one dead process breaks a whole
``ProcessPoolExecutor``, failing every job in flight; here a worker that dies fails only the job
it held (:class:`WorkerLost`) and is replaced.

Protocol, JSON lines: the worker writes ``{"ready": pid}`` once its imports and the ``default``
model are loaded, then answers each request ``{"job", "model", "recordings": [{"format",
"paths", "names", "area_order", "noise"}]}`` with one line, ``{"result": {...}}`` or
``{"error": "..."}``. It exits when its stdin closes (the server stopped or died). Its own
prints and logs go to the server's stderr.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# A busy worker gets this long at shutdown to finish its job before it is killed (the job then
# stays running and is re-run after a restart).
SHUTDOWN_GRACE_S = 30.0


class WorkerLost(RuntimeError):
    """The worker process died, or could not start, with a job in hand: only that job fails."""


def worker_env(settings) -> dict[str, str]:
    """The server's environment with its effective settings (which may not come from the
    environment: tests and ``serve --port`` pass them in), one BLAS thread unless set."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = value.absolute()  # the worker runs in another folder
        env[f"RULEFINDER_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    # Parallelism comes from the processes; BLAS threads per worker would only contend.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class _Worker:
    """One worker process; used by one job thread at a time."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=PACKAGE_ROOT,  # ``-m`` then imports this very api package
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.ready = False
        self.busy = False

    def call(self, request: dict) -> dict:
        when = "before it was ready"
        try:
            if not self.ready:
                self.ready = "ready" in self._answer()
                if not self.ready:
                    raise ValueError("no ready line")
            when = "while predicting"
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return self._answer()
        except (OSError, ValueError):  # a broken or closed pipe, EOF, a garbled line
            self.kill()
            self.close_pipes()
            raise WorkerLost(
                f"the prediction worker process {_exit_description(self.proc.returncode)} {when}; "
                "the job failed and the worker was replaced (the server log has its output)"
            ) from None

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise ValueError("end of stream")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        return answer

    def close_input(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class ProcessPool:
    """``size`` worker processes, started at once so the first jobs find the model loaded."""

    def __init__(self, size: int, env: dict[str, str]):
        self.env = env
        self._lock = threading.Lock()
        self._closed = False
        self._workers = [_Worker(env) for _ in range(size)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._workers:
            self._idle.put(w)

    def call(self, request: dict) -> dict:
        """The worker's answer to ``request``; raises :class:`WorkerLost` if it died meanwhile."""
        worker = self._idle.get()
        worker.busy = True
        try:
            return worker.call(request)
        except WorkerLost:
            worker = self._replace(worker)
            raise
        finally:
            worker.busy = False
            self._idle.put(worker)

    def _replace(self, dead: _Worker) -> _Worker:
        with self._lock:
            if self._closed:
                return dead
            new = _Worker(self.env)
            self._workers[self._workers.index(dead)] = new
            log.warning("prediction worker %d replaced by %d", dead.proc.pid, new.proc.pid)
            return new

    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Idle workers stop now; busy ones when their job ends (at most ``grace_s``). The pipes
        stay open for the job threads reading the last answers: :meth:`close_pipes` after them."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for w in workers:
            if w.busy:
                w.close_input()  # it answers, then reads the end of its input and exits
            else:
                w.kill()
        deadline = time.monotonic() + grace_s
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()

    def close_pipes(self) -> None:
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            w.close_pipes()


def command() -> list[str]:
    """The worker's command line (tests replace it to plant a crash)."""
    return [sys.executable, "-m", "api.workers"]


# ---- the worker process ----


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # library prints must not corrupt the answers
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format=f"prediction worker {os.getpid()}: %(levelname)s %(name)s: %(message)s")

    def send(answer: dict) -> None:
        answers.write(json.dumps(answer) + "\n")
        answers.flush()

    from api.jobs import job_outcome, load_blobs, predict_loaded
    from rulefinder.classify.registry import ModelRegistry, load_model
    from rulefinder.settings import get_settings

    registry = ModelRegistry(data_dir=get_settings().data_dir / "models")
    try:
        if "default" in registry.names():
            load_model("default", registry=registry)
    except Exception:  # noqa: BLE001 - each job that asks for it reports the same error
        log.exception("the default model did not load")
    send({"ready": os.getpid()})

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        recordings = request["recordings"]

        def predict() -> dict:
            loaded = [load_blobs(r["format"], [Path(p) for p in r["paths"]], r["names"], r["area_order"]) for r in recordings]
            return predict_loaded(loaded, [r["noise"] for r in recordings], load_model(request["model"], registry=registry))

        result, error = job_outcome(predict, request["job"])
        send({"result": result} if error is None else {"error": error})


if __name__ == "__main__":
    main()
