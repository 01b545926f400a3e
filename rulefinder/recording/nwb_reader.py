"""NWB session files read in a separate reader process with a time limit per file.

libhdf5 can loop forever (full CPU, constant memory) inside h5py on some damaged files, e.g.
a variable-length string attribute whose global heap was zeroed. No Python code can interrupt
that call in-process, so :func:`read_sessions` hands the files to a reader process
(``python -m rulefinder.recording.nwb_reader``) and kills it when one file takes longer than
``RULEFINDER_NWB_READ_TIMEOUT_S``; the file is then reported as a :class:`RecordingError`.

The reader is a plain subprocess, not :mod:`multiprocessing`: spawn and forkserver re-import
the caller's ``__main__``, which breaks scripts without a ``__main__`` guard. It is started on
first use and reused by later reads of the same process (importing h5py and pynwb costs far
more than reading a session file); it is replaced after a time-out or a crash, and exits when
its parent closes the pipe or dies.

Protocol: one JSON request per line on the reader's stdin; JSON events back, one per line, on
its original stdout (its own prints go to stderr). Arrays travel through a temporary folder
as ``.npy`` files written and read with ``allow_pickle=False``; nothing is ever unpickled.
Every request ends with exactly one of ``end``, ``error`` (a :class:`RecordingError`, raised
again in the parent with the same message) or ``crash`` (anything else: a bug, raised in the
parent as :class:`NWBReaderCrash` with the reader's traceback).
"""

from __future__ import annotations

import atexit
import builtins
import collections
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from rulefinder.recording.errors import RecordingError, RecordingWarning
from rulefinder.recording.nwb import _Session, read_nwb_session

# Importing numpy, h5py and pynwb in a fresh interpreter takes seconds on a busy machine; this
# bounds only a reader that never gets that far (no file is being read yet).
STARTUP_LIMIT_S = 120.0
_ARRAYS = ("stimuli", "responses", "areas", "global_id")


class NWBReaderCrash(RuntimeError):
    """The reader process raised something other than a RecordingError: a bug, not a damaged file."""


# ---- the reader process ----


def _serve(request: dict, send) -> None:
    out = Path(request["out"])
    # a backstop for a reader whose parent died mid-file: SIGALRM's default action ends the
    # process even while libhdf5 holds the interpreter; the parent kills it long before
    alarm = min(int(math.ceil(2 * request["timeout_s"])) + 10, 2**31 - 1)
    for i, (path, source) in enumerate(request["files"]):
        send({"start": i})
        if hasattr(signal, "alarm"):
            signal.alarm(alarm)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                session = read_nwb_session(path, source=source)
        except RecordingError as exc:
            send({"error": {"source": exc.source, "field": exc.field, "reason": exc.reason}})
            return
        except Exception as exc:  # noqa: BLE001 - a bug: sent back whole and raised in the parent
            send({"crash": {"source": source, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}})
            return
        finally:
            if hasattr(signal, "alarm"):
                signal.alarm(0)
        for w in caught:
            send({"warning": {"category": w.category.__name__, "message": str(w.message)}})
        for name in _ARRAYS:
            value = getattr(session, name)
            if value is not None:
                np.save(out / f"{i}_{name}.npy", np.asarray(value), allow_pickle=False)
        send(
            {
                "done": i,
                "session": {
                    "path": session.path,
                    "start": session.start.isoformat(),
                    "kind": session.kind,
                    "performance": session.performance,
                    "warnings": session.warnings,
                },
            }
        )
    send({"end": True})


def main() -> None:
    """The reader process: serve requests from stdin until it closes."""
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints must not corrupt the event stream
    sys.stdout = sys.stderr

    def send(event: dict) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    import pynwb  # noqa: F401 - imported before "ready" so no file's time limit pays for it

    send({"ready": os.getpid()})
    for line in sys.stdin:
        if line.strip():
            _serve(json.loads(line), send)


# ---- the parent side ----


class _Reader:
    """One running reader process and the threads draining its pipes."""

    def __init__(self):
        package_root = Path(__file__).resolve().parents[2]
        # cwd: ``-m`` puts it first on sys.path, so the reader imports this very rulefinder
        # (also when the caller found it through sys.path) and nothing the user's cwd shadows
        self.proc = subprocess.Popen(
            _command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=package_root,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.events: queue.Queue = queue.Queue()
        self.stderr: collections.deque = collections.deque(maxlen=30)
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        event = self._next(time.monotonic() + STARTUP_LIMIT_S)
        if not isinstance(event, dict) or "ready" not in event:
            self.kill()
            why = "did not start" if event == "timeout" else "exited"
            raise NWBReaderCrash(
                f"the NWB reader process ({' '.join(_command())}) {why} within {STARTUP_LIMIT_S:g} s:\n"
                + "".join(self.stderr)
            )

    def _drain_stdout(self) -> None:
        try:
            for line in self.proc.stdout:
                self.events.put(json.loads(line))
        finally:  # end of stream (or a garbled line): the reader is treated as dead
            self.events.put(None)

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _next(self, deadline: float):
        try:
            return self.events.get(timeout=min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX))
        except queue.Empty:
            return "timeout"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def read(self, paths: list[Path], sources: list[str], timeout_s: float) -> list[_Session]:
        sessions: list[_Session] = []
        with tempfile.TemporaryDirectory(prefix="rulefinder-nwb-") as out:
            request = {"files": [[str(p), s] for p, s in zip(paths, sources)], "out": out, "timeout_s": timeout_s}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            current, deadline = 0, time.monotonic() + timeout_s
            while True:
                event = self._next(deadline)
                if event == "timeout":
                    self.kill()
                    raise RecordingError(
                        sources[current],
                        None,
                        f"reading it did not finish within {timeout_s:g} s (RULEFINDER_NWB_READ_TIMEOUT_S): "
                        "likely a damaged HDF5 file (libhdf5 can loop forever on one)",
                    )
                if event is None:
                    self.kill()
                    raise RecordingError(sources[current], None, self._death())
                if "start" in event:
                    current, deadline = event["start"], time.monotonic() + timeout_s
                elif "warning" in event:
                    _warn_again(event["warning"])
                elif "done" in event:
                    sessions.append(_session(event["session"], Path(out), event["done"]))
                elif "error" in event:
                    e = event["error"]
                    raise RecordingError(e["source"], e["field"], e["reason"])
                elif "crash" in event:
                    c = event["crash"]
                    raise NWBReaderCrash(
                        f"{c['source']}: the NWB reader process raised {c['error']} (a bug, not a damaged "
                        f"file)\n--- reader traceback ---\n{c['traceback']}"
                    )
                elif "end" in event:
                    return sessions

    def _death(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        if code == -getattr(signal, "SIGALRM", 0):
            how += " (its own time limit)"
        return f"the NWB reader process {how} while reading it: likely a damaged HDF5 file"


def _command() -> list[str]:
    """The reader's command line (tests replace it to run a reader with a planted bug)."""
    return [sys.executable, "-m", "rulefinder.recording.nwb_reader"]


def _session(meta: dict, out: Path, i: int) -> _Session:
    arrays = {}
    for name in _ARRAYS:
        f = out / f"{i}_{name}.npy"
        arrays[name] = np.load(f, allow_pickle=False) if f.exists() else None
    return _Session(
        path=meta["path"],
        start=datetime.fromisoformat(meta["start"]),
        kind=meta["kind"],
        performance=meta["performance"],
        warnings=list(meta["warnings"]),
        **arrays,
    )


def _warn_again(w: dict) -> None:
    category = getattr(builtins, w["category"], None)
    if w["category"] == "RecordingWarning":
        category = RecordingWarning
    elif not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning  # a library's own class: not imported in this process
    warnings.warn(w["message"], category, stacklevel=4)


_reader: _Reader | None = None
_lock = threading.Lock()


def read_sessions(paths: Sequence[Path], sources: Sequence[str], timeout_s: float) -> list[_Session]:
    """Read each NWB session file in the reader process; ``timeout_s`` bounds each file."""
    global _reader
    paths = [Path(p).absolute() for p in paths]  # the reader runs in another folder
    with _lock:
        if _reader is None or not _reader.alive():
            _reader = _Reader()
        reader = _reader
        finished = False
        try:
            sessions = reader.read(paths, list(sources), timeout_s)
            finished = True
            return sessions
        except (RecordingError, NWBReaderCrash):
            finished = reader.alive()  # the request ended in order, or the reader is gone
            raise
        finally:
            if not finished:  # interrupted mid-request: its late events would answer the next one
                reader.kill()
            if not reader.alive():
                _reader = None


def shutdown() -> None:
    """Stop the reader process (it is started again on the next read)."""
    global _reader
    with _lock:
        if _reader is not None:
            _reader.proc.stdin.close()
            try:
                _reader.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _reader.kill()
            _reader = None


def _forget_after_fork() -> None:
    # a forked child must not talk to its parent's reader (the two would read each other's
    # answers); it starts its own on first use
    global _reader, _lock
    _reader, _lock = None, threading.Lock()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


if __name__ == "__main__":
    main()
