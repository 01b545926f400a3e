"""API keys (``Authorization: Bearer <key>``) and the per-key rate limit.

With auth off (allowed only on loopback, see :func:`rulefinder.settings.effective_auth`) every
request belongs to one local owner.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import Request

from api.storage import LOCAL_OWNER, Storage


class ApiError(Exception):
    """An error answered as ``{"detail": ...}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class RateLimiter:
    """A token bucket per owner: ``per_minute`` sustained, bursts of ``burst`` requests."""

    def __init__(self, per_minute: float, burst: float | None = None):
        self.rate = per_minute / 60.0
        self.burst = burst if burst is not None else max(10.0, per_minute / 10.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, owner: str) -> float | None:
        """Take one token; returns None if allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(owner, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                return None
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / self.rate


class Authenticator:
    def __init__(self, storage: Storage, mode: str, limiter: RateLimiter):
        self.storage = storage
        self.mode = mode
        self.limiter = limiter

    def owner(self, request: Request) -> str:
        header = request.headers.get("authorization")
        if self.mode == "off":
            owner = LOCAL_OWNER
        else:
            if not header:
                raise ApiError(401, "missing Authorization header: expected 'Bearer <API key>'", {"WWW-Authenticate": "Bearer"})
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise ApiError(401, "malformed Authorization header: expected 'Bearer <API key>'", {"WWW-Authenticate": "Bearer"})
            found = self.storage.owner_of_key(key.strip())
            if found is None:
                raise ApiError(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
            owner = found
        wait = self.limiter.check(owner)
        if wait is not None:
            raise ApiError(
                429,
                f"rate limit exceeded: retry after {math.ceil(wait)} s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return owner


async def current_owner(request: Request) -> str:
    """FastAPI dependency: the owner (API key) of the request, after the rate limit."""
    # async on purpose: a plain ``def`` dependency costs a thread-pool round trip on every
    # request, and the key lookup is one indexed read.
    return request.app.state.auth.owner(request)
