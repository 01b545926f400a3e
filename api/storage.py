"""Server state under ``RULEFINDER_DATA_DIR``: SQLite (WAL) metadata and content-addressed blobs.

Layout::

    <data_dir>/service/service.sqlite3      keys, recordings, files, prediction jobs
    <data_dir>/service/blobs/<owner>/<ab>/<sha256>   uploaded bytes, once per owner
    <data_dir>/service/incoming/             uploads being streamed (removed on failure)

Blobs are de-duplicated per owner, not across owners: one key can never learn from timing or
sizes whether another key uploaded the same file, and deleting never touches another owner.
A recording's id covers its files' bytes and its ``noise`` and ``area_order`` fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS recordings (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created REAL NOT NULL,
    format TEXT NOT NULL,
    noise TEXT NOT NULL,
    area_order TEXT,
    summary TEXT NOT NULL,
    warnings TEXT NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS recordings_created ON recordings (created);
CREATE TABLE IF NOT EXISTS recording_files (
    owner TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (owner, recording_id, position)
);
CREATE INDEX IF NOT EXISTS recording_files_sha ON recording_files (owner, sha256);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
CREATE TABLE IF NOT EXISTS job_recordings (
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX IF NOT EXISTS job_recordings_rec ON job_recordings (owner, recording_id);
"""

#: The owner of everything when auth is off (one local user on loopback).
LOCAL_OWNER = "local"


def hash_key(key: str) -> str:
    # API keys are 256 random bits, so a plain SHA-256 is enough (no password stretching needed);
    # only the hash is stored.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RecordingRow:
    id: str
    owner: str
    created: float
    format: str
    noise: str
    area_order: list[str] | None
    summary: dict[str, Any]
    warnings: list[str]
    files: list[StoredFile]


@dataclass(frozen=True)
class JobRow:
    id: str
    owner: str
    recording_ids: list[str]
    model: str | None
    status: str
    result: dict[str, Any] | None
    error: str | None
    created: float
    updated: float
    attempts: int


@dataclass(frozen=True)
class KeyRow:
    name: str
    owner: str
    created: float
    revoked: float | None


def recording_id(owner: str, files: list[StoredFile], noise: str, area_order: list[str] | None) -> str:
    """Same bytes with the same fields -> the same id (per owner); a different field -> a new id."""
    h = hashlib.sha256()
    for part in (owner, noise, json.dumps(area_order), *(f.sha256 for f in files)):
        h.update(part.encode())
        h.update(b"\0")
    return "rec_" + h.hexdigest()[:24]


class Storage:
    """Thread-safe access to the service's SQLite database and blob directory."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "service"
        self.blob_dir = self.root / "blobs"
        self.incoming = self.root / "incoming"
        for d in (self.root, self.blob_dir, self.incoming):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "service.sqlite3"
        self._local = threading.local()
        # Guards "does any recording still use this blob" against a concurrent upload of the
        # same bytes (one server process owns the directory).
        self._blob_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._connection().executescript(SCHEMA)
        self._clean_incoming()

    # -- plumbing -------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _write(self) -> "_Tx":
        # Writers of this process queue on a lock instead of in SQLite's busy handler, which
        # sleeps in steps of milliseconds and would stall the event loop; the busy timeout is
        # still there for other processes (``rulefinder keys``).
        return _Tx(self._connection(), "BEGIN IMMEDIATE", self._write_lock)

    def _read(self) -> "_Tx":
        # A deferred transaction: one consistent WAL snapshot that neither waits for nor blocks
        # a writer.
        return _Tx(self._connection(), "BEGIN", None)

    def _clean_incoming(self) -> None:
        # Partial uploads of a server that died mid-request are garbage.
        for p in self.incoming.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def new_incoming_dir(self) -> Path:
        d = self.incoming / secrets.token_hex(8)
        d.mkdir()
        return d

    def blob_path(self, owner: str, sha256: str) -> Path:
        return self.blob_dir / owner / sha256[:2] / sha256

    # -- keys -----------------------------------------------------------------------------
    def create_key(self, name: str) -> str:
        """Create a key named ``name``; returns the secret, which is never stored or shown again."""
        if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"key name {name!r}: expected 1-100 letters, digits, '-', '_' or '.'")
        key = "rf_" + secrets.token_urlsafe(32)
        owner = "k_" + secrets.token_hex(8)
        with self._write() as conn:
            row = conn.execute("SELECT revoked FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ValueError(f"key name {name!r} exists: expected a new name (or revoke it first)")
            if row is not None:
                conn.execute("DELETE FROM api_keys WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO api_keys (name, owner, key_hash, created) VALUES (?, ?, ?, ?)",
                (name, owner, hash_key(key), time.time()),
            )
        return key

    def list_keys(self) -> list[KeyRow]:
        with self._read() as conn:
            rows = conn.execute("SELECT name, owner, created, revoked FROM api_keys ORDER BY created").fetchall()
        return [KeyRow(*r) for r in rows]

    def revoke_key(self, name: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name)
            )
            if cur.rowcount == 0:
                raise KeyError(f"no active key named {name!r}")

    def owner_of_key(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT owner FROM api_keys WHERE key_hash = ? AND revoked IS NULL", (hash_key(key),)
            ).fetchone()
        return row[0] if row else None

    # -- recordings -----------------------------------------------------------------------
    def _commit_blob(self, owner: str, sha256: str, temp: Path) -> None:
        # Caller holds _blob_lock.
        dest = self.blob_path(owner, sha256)
        if dest.exists():
            temp.unlink(missing_ok=True)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, dest)

    def add_recording(self, row: RecordingRow, blobs: dict[str, Path] | None = None) -> RecordingRow:
        """Move verified uploads (``blobs``: sha256 -> temporary file) into the owner's blob store
        and insert the row (idempotently: the same id returns the stored row). One lock covers
        both, so a concurrent delete of another recording with the same bytes cannot remove a
        blob between its move and the row that keeps it."""
        with self._blob_lock:
            for sha, temp in (blobs or {}).items():
                self._commit_blob(row.owner, sha, temp)
            return self._insert_recording(row)

    def _insert_recording(self, row: RecordingRow) -> RecordingRow:
        with self._write() as conn:
            existing = self._get_recording(conn, row.owner, row.id)
            if existing is not None:
                return existing
            conn.execute(
                "INSERT INTO recordings (owner, id, created, format, noise, area_order, summary, warnings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.owner,
                    row.id,
                    row.created,
                    row.format,
                    row.noise,
                    json.dumps(row.area_order) if row.area_order is not None else None,
                    json.dumps(row.summary),
                    json.dumps(row.warnings),
                ),
            )
            conn.executemany(
                "INSERT INTO recording_files (owner, recording_id, position, name, sha256, size) VALUES (?, ?, ?, ?, ?, ?)",
                [(row.owner, row.id, i, f.name, f.sha256, f.size) for i, f in enumerate(row.files)],
            )
        return row

    def _get_recording(self, conn, owner: str, rid: str) -> RecordingRow | None:
        r = conn.execute(
            "SELECT id, owner, created, format, noise, area_order, summary, warnings FROM recordings "
            "WHERE owner = ? AND id = ?",
            (owner, rid),
        ).fetchone()
        if r is None:
            return None
        files = conn.execute(
            "SELECT name, sha256, size FROM recording_files WHERE owner = ? AND recording_id = ? ORDER BY position",
            (owner, rid),
        ).fetchall()
        return RecordingRow(
            id=r[0],
            owner=r[1],
            created=r[2],
            format=r[3],
            noise=r[4],
            area_order=json.loads(r[5]) if r[5] is not None else None,
            summary=json.loads(r[6]),
            warnings=json.loads(r[7]),
            files=[StoredFile(*f) for f in files],
        )

    def get_recording(self, owner: str, rid: str) -> RecordingRow | None:
        with self._read() as conn:
            return self._get_recording(conn, owner, rid)

    def list_recordings(self, owner: str, limit: int = 1000, offset: int = 0) -> list[RecordingRow]:
        with self._read() as conn:
            ids = conn.execute(
                "SELECT id FROM recordings WHERE owner = ? ORDER BY created DESC, id LIMIT ? OFFSET ?",
                (owner, limit, offset),
            ).fetchall()
            return [r for (rid,) in ids if (r := self._get_recording(conn, owner, rid)) is not None]

    def delete_recording(self, owner: str, rid: str) -> bool:
        """Delete a recording, the predictions that used it, and blobs no other recording uses."""
        with self._blob_lock:
            with self._write() as conn:
                shas = [
                    s
                    for (s,) in conn.execute(
                        "SELECT sha256 FROM recording_files WHERE owner = ? AND recording_id = ?", (owner, rid)
                    )
                ]
                cur = conn.execute("DELETE FROM recordings WHERE owner = ? AND id = ?", (owner, rid))
                if cur.rowcount == 0:
                    return False
                conn.execute("DELETE FROM recording_files WHERE owner = ? AND recording_id = ?", (owner, rid))
                jobs = [
                    j
                    for (j,) in conn.execute(
                        "SELECT DISTINCT job_id FROM job_recordings WHERE owner = ? AND recording_id = ?", (owner, rid)
                    )
                ]
                conn.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in jobs])
                conn.executemany("DELETE FROM job_recordings WHERE job_id = ?", [(j,) for j in jobs])
                unused = [
                    s
                    for s in set(shas)
                    if conn.execute(
                        "SELECT 1 FROM recording_files WHERE owner = ? AND sha256 = ? LIMIT 1", (owner, s)
                    ).fetchone()
                    is None
                ]
            for s in unused:
                self.blob_path(owner, s).unlink(missing_ok=True)
        return True

    def expired_recordings(self, older_than: float) -> list[tuple[str, str]]:
        with self._read() as conn:
            return conn.execute("SELECT owner, id FROM recordings WHERE created < ?", (older_than,)).fetchall()

    # -- jobs -----------------------------------------------------------------------------
    def add_job(self, owner: str, recording_ids: list[str], model: str | None) -> JobRow:
        jid = "pred_" + secrets.token_hex(12)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, owner, model, status, created, updated) VALUES (?, ?, ?, 'queued', ?, ?)",
                (jid, owner, model, now, now),
            )
            conn.executemany(
                "INSERT INTO job_recordings (job_id, owner, recording_id, position) VALUES (?, ?, ?, ?)",
                [(jid, owner, r, i) for i, r in enumerate(recording_ids)],
            )
        return JobRow(jid, owner, list(recording_ids), model, "queued", None, None, now, now, 0)

    def get_job(self, jid: str, owner: str | None = None) -> JobRow | None:
        with self._read() as conn:
            r = conn.execute(
                "SELECT id, owner, model, status, result, error, created, updated, attempts FROM jobs WHERE id = ?",
                (jid,),
            ).fetchone()
            if r is None or (owner is not None and r[1] != owner):
                return None
            recs = [
                x
                for (x,) in conn.execute(
                    "SELECT recording_id FROM job_recordings WHERE job_id = ? ORDER BY position", (jid,)
                )
            ]
        return JobRow(
            id=r[0],
            owner=r[1],
            recording_ids=recs,
            model=r[2],
            status=r[3],
            result=json.loads(r[4]) if r[4] else None,
            error=r[5],
            created=r[6],
            updated=r[7],
            attempts=r[8],
        )

    def job_status(self, jid: str) -> str | None:
        """Just the status (one indexed read): what a long poll checks."""
        row = self._connection().execute("SELECT status FROM jobs WHERE id = ?", (jid,)).fetchone()
        return row[0] if row else None

    def start_job(self, jid: str) -> bool:
        """queued -> running; False if the job is gone or not queued (deleted meanwhile)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated = ? "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), jid),
            )
            return cur.rowcount == 1

    def finish_job(self, jid: str, result: dict | None = None, error: str | None = None) -> None:
        status = "succeeded" if error is None else "failed"
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, updated = ? WHERE id = ?",
                (status, json.dumps(result) if result is not None else None, error, time.time(), jid),
            )

    def requeue_unfinished(self) -> list[str]:
        """After a restart: running jobs go back to queued; returns every queued job, oldest first."""
        with self._write() as conn:
            conn.execute("UPDATE jobs SET status = 'queued', updated = ? WHERE status = 'running'", (time.time(),))
            return [j for (j,) in conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, id")]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Tx:
    """``with`` = one transaction (``begin`` ... COMMIT/ROLLBACK) on a thread's connection,
    holding ``lock`` (if any) throughout."""

    def __init__(self, conn: sqlite3.Connection, begin: str, lock: threading.Lock | None):
        self.conn = conn
        self.begin = begin
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.conn.execute(self.begin)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            if self.lock is not None:
                self.lock.release()
