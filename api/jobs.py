"""Prediction jobs: a worker pool off the event loop, with state in SQLite so it survives restarts.

A job is queued in the database first and only then handed to the pool; at start-up every job
still ``queued`` is handed to the pool again and every job left ``running`` by a stopped server
goes back to ``queued`` (a prediction is a pure function of its inputs, so re-running is safe).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import xarray as xr

from api.storage import JobRow, RecordingRow, Storage
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


def load_stored_recording(storage: Storage, row: RecordingRow) -> xr.DataArray:
    """Load a stored recording from its blobs (with the upload's area_order applied)."""
    from api.recordings import load_files

    paths = [storage.blob_path(row.owner, f.sha256) for f in row.files]
    missing = [f.name for f, p in zip(row.files, paths) if not p.exists()]
    if missing:
        raise RecordingError(missing[0], None, "the stored file is gone (the recording was deleted)")
    rec, _ = load_files(row.format, paths, [f.name for f in row.files], row.area_order)
    return rec


class JobRunner:
    def __init__(self, storage: Storage, workers: int, registry=None, cache: RecordingCache | None = None):
        self.storage = storage
        self.registry = registry
        self.cache = cache or RecordingCache()
        # Long-polling requests waiting for a job to end: job id -> [(event loop, asyncio.Event)].
        self._waiters: dict[str, list] = {}
        self._waiters_lock = threading.Lock()
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
            result = self.predict(job)
        except RecordingError as exc:
            self.storage.finish_job(jid, error=str(exc))
        except LookupError as exc:  # unknown model
            self.storage.finish_job(jid, error=str(exc.args[0] if exc.args else exc))
        except Exception as exc:  # noqa: BLE001 - a job must end; the traceback goes to the log
            log.exception("prediction job %s failed", jid)
            self.storage.finish_job(jid, error=f"internal error while predicting: {type(exc).__name__}: {exc}")
        else:
            self.storage.finish_job(jid, result=result)
        finally:
            self._notify(jid)

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

    def predict(self, job: JobRow) -> dict:
        from rulefinder.classify.predict import predict_recordings
        from rulefinder.classify.registry import load_model

        rows = []
        for rid in job.recording_ids:
            row = self.storage.get_recording(job.owner, rid)
            if row is None:
                raise RecordingError(rid, None, "recording was deleted before the prediction ran")
            rows.append(row)
        recordings = [self._recording(r) for r in rows]
        noise = noisiest([r.noise for r in rows])
        model = load_model(job.model or "default", registry=self.registry)
        results = predict_recordings(recordings, model=model, noise=noise, group=True)
        result = results[0]
        if len({r.noise for r in rows}) > 1:
            result.warnings.append(
                f"recordings were uploaded with different noise levels; the noisiest, {noise!r}, was used"
            )
        return result.model_dump(mode="json")

    def _recording(self, row: RecordingRow) -> xr.DataArray:
        rec = self.cache.get(row.owner, row.id)
        if rec is None:
            rec = load_stored_recording(self.storage, row)
            self.cache.put(row.owner, row.id, rec)
        return rec

    def close(self) -> None:
        self._closed.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
