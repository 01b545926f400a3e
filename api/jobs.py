"""Prediction jobs: a worker pool off the event loop, with state in SQLite so it survives restarts.

A job is queued in the database first and only then handed to the pool; at start-up every job
still ``queued`` is handed to the pool again and every job left ``running`` by a stopped server
goes back to ``queued`` (a prediction is a pure function of its inputs, so re-running is safe).

``RULEFINDER_WORKER_POOL=processes`` (the default) predicts in worker processes
(:mod:`api.workers`): a prediction is mostly Python, and threads of the server process would
share one GIL with upload parsing and the event loop. The job's state stays here, in the server:
its threads hand each job to an idle worker process and wait for the answer. ``threads``
predicts in those threads, in-process.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xarray as xr

from api.storage import JobRow, RecordingRow, Storage
from api.workers import WorkerLost
from rulefinder.recording import RecordingError
from rulefinder.vocabulary import NOISE_LEVELS

log = logging.getLogger(__name__)


def noisiest(levels: list[str]) -> str:
    """The level with the lowest SNR: combining recordings, the conservative expectation wins."""
    return min(levels, key=lambda n: NOISE_LEVELS[n])


class RecordingCache:
    """Recently uploaded recordings, parsed, bounded in bytes: a prediction that follows its
    upload (the common case) does not parse the file a second time."""

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], xr.DataArray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, owner: str, rid: str, rec: xr.DataArray) -> None:
        size = int(rec.nbytes)
        if size > self.max_bytes:
            return
        with self._lock:
            self._pop((owner, rid))
            self._items[(owner, rid)] = rec
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._pop(next(iter(self._items)))

    def get(self, owner: str, rid: str) -> xr.DataArray | None:
        with self._lock:
            rec = self._items.get((owner, rid))
            if rec is not None:
                self._items.move_to_end((owner, rid))
            return rec

    def drop(self, owner: str, rid: str) -> None:
        with self._lock:
            self._pop((owner, rid))

    def _pop(self, key) -> None:
        rec = self._items.pop(key, None)
        if rec is not None:
            self._bytes -= int(rec.nbytes)


def load_blobs(fmt: str, paths: list[Path], names: list[str], area_order: list[str] | None) -> xr.DataArray:
    """Load a stored recording from its blobs (with the upload's area_order applied)."""
    from api.recordings import load_files

    missing = [n for n, p in zip(names, paths) if not p.exists()]
    if missing:
        raise RecordingError(missing[0], None, "the stored file is gone (the recording was deleted)")
    rec, _ = load_files(fmt, paths, names, area_order)
    return rec


def load_stored_recording(storage: Storage, row: RecordingRow) -> xr.DataArray:
    return load_blobs(row.format, [storage.blob_path(row.owner, f.sha256) for f in row.files], [f.name for f in row.files], row.area_order)


def predict_loaded(recordings: list[xr.DataArray], noises: list[str], model) -> dict:
    """One grouped prediction over loaded recordings, as the result's JSON dict."""
    from rulefinder.classify.predict import predict_recordings

    noise = noisiest(noises)
    result = predict_recordings(recordings, model=model, noise=noise, group=True)[0]
    if len(set(noises)) > 1:
        result.warnings.append(
            f"recordings were uploaded with different noise levels; the noisiest, {noise!r}, was used"
        )
    return result.model_dump(mode="json")


class JobFailed(Exception):
    """A job's error message, as a worker process answered it."""


def job_outcome(predict: Callable[[], dict], jid: str) -> tuple[dict | None, str | None]:
    """``(result, None)`` or ``(None, error)``: a job must end, whatever ``predict`` raises
    (but :class:`WorkerLost`, which the caller handles)."""
    try:
        return predict(), None
    except WorkerLost:
        raise
    except (RecordingError, JobFailed) as exc:
        return None, str(exc)
    except LookupError as exc:  # unknown model
        return None, str(exc.args[0] if exc.args else exc)
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log
        log.exception("prediction job %s failed", jid)
        return None, f"internal error while predicting: {type(exc).__name__}: {exc}"


class JobRunner:
    """``workers`` threads run the jobs. ``processes``: an :class:`api.workers.ProcessPool` of as
    many processes, which the threads hand each prediction to; None: the threads predict."""

    def __init__(self, storage: Storage, workers: int, registry=None, cache: RecordingCache | None = None, processes=None):
        self.storage = storage
        self.registry = registry
        self.processes = processes
        # Parsed uploads help only a prediction in this process; worker processes read the blobs.
        self.cache = cache or RecordingCache(max_bytes=0 if processes is not None else 64 * 2**20)
        # Long-polling requests waiting for a job to end: job id -> [(event loop, asyncio.Event)].
        self._waiters: dict[str, list] = {}
        self._waiters_lock = threading.Lock()
        # With processes these threads only wait for a worker's answer (no GIL held meanwhile).
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
        self._closed = threading.Event()

    def resume(self) -> int:
        """Hand every unfinished job of a previous run to the pool; returns how many."""
        ids = self.storage.requeue_unfinished()
        for jid in ids:
            self.submit(jid)
        if ids:
            log.info("resumed %d unfinished prediction jobs", len(ids))
        return len(ids)

    def submit(self, jid: str) -> None:
        if not self._closed.is_set():
            self.pool.submit(self._run, jid)

    def _run(self, jid: str) -> None:
        if self._closed.is_set() or not self.storage.start_job(jid):
            return
        job = self.storage.get_job(jid)
        if job is None:  # deleted with its recording meanwhile
            return
        try:
            predict = self.predict if self.processes is None else self._predict_in_worker
            result, error = job_outcome(lambda: predict(job), jid)
            self.storage.finish_job(jid, result=result, error=error)
        except WorkerLost as exc:
            if self._closed.is_set():
                return  # stopped by the shutdown: the job stays running and is re-run after a restart
            log.error("prediction job %s: %s", jid, exc)
            self.storage.finish_job(jid, error=str(exc))
        finally:
            self._notify(jid)

    def _predict_in_worker(self, job: JobRow) -> dict:
        rows = self._rows(job)
        # Paths and ids only: the worker parses the stored bytes with the recording loaders.
        request = {
            "job": job.id,
            "model": job.model or "default",
            "recordings": [
                {
                    "format": r.format,
                    "paths": [str(self.storage.blob_path(r.owner, f.sha256).absolute()) for f in r.files],
                    "names": [f.name for f in r.files],
                    "area_order": r.area_order,
                    "noise": r.noise,
                }
                for r in rows
            ],
        }
        answer = self.processes.call(request)
        if "error" in answer:
            raise JobFailed(answer["error"])
        return answer["result"]

    async def wait_for(self, jid: str, timeout: float) -> None:
        """Return when job ``jid`` ends or after ``timeout`` s (callers re-read its state)."""
        import asyncio

        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._waiters_lock:
            self._waiters.setdefault(jid, []).append(entry)
        try:
            # The job may have ended between the caller's read and the registration above.
            if self.storage.job_status(jid) in (None, "succeeded", "failed"):
                return
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        finally:
            with self._waiters_lock:
                waiters = self._waiters.get(jid, [])
                if entry in waiters:
                    waiters.remove(entry)
                if not waiters:
                    self._waiters.pop(jid, None)

    def _notify(self, jid: str) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters.get(jid, []))
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed
                pass

    def _rows(self, job: JobRow) -> list[RecordingRow]:
        rows = []
        for rid in job.recording_ids:
            row = self.storage.get_recording(job.owner, rid)
            if row is None:
                raise RecordingError(rid, None, "recording was deleted before the prediction ran")
            rows.append(row)
        return rows

    def predict(self, job: JobRow) -> dict:
        """The job's prediction in this process (the ``threads`` pool)."""
        from rulefinder.classify.registry import load_model

        rows = self._rows(job)
        recordings = [self._recording(r) for r in rows]
        model = load_model(job.model or "default", registry=self.registry)
        return predict_loaded(recordings, [r.noise for r in rows], model)

    def _recording(self, row: RecordingRow) -> xr.DataArray:
        rec = self.cache.get(row.owner, row.id)
        if rec is None:
            rec = load_stored_recording(self.storage, row)
            self.cache.put(row.owner, row.id, rec)
        return rec

    def close(self) -> None:
        self._closed.set()
        if self.processes is not None:
            # Idle workers stop now, busy ones after their answer: a job in flight either ends
            # or stays running (re-run after a restart); the threads then return at once.
            self.processes.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.close_pipes()
