"""Joining Ray: a cluster given by ``--address`` / ``RAY_ADDRESS``, else a real local Ray.

``local_mode`` no longer exists in Ray, and it hid the very things the pipeline must get right
(serialisation, retries, worker deaths), so the local path is a real one-node Ray sized to
the machine, with a small object store (tasks pass shard specs and counts, never arrays: the
data goes through the Zarr store) and no dashboard.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Tasks exchange small dicts; 80 MB is Ray's floor and plenty.
LOCAL_OBJECT_STORE_BYTES = 80 * 1024**2


@dataclass
class ClusterInfo:
    address: str | None
    nodes: int
    cpus: float
    gpus: float
    local: bool

    def as_dict(self) -> dict:
        return {"address": self.address, "nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus,
                "local": self.local}


def resolve_address(address: str | None) -> str | None:
    """``--address`` wins, then ``RAY_ADDRESS``; ``None`` means a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None = None, num_cpus: int | None = None) -> ClusterInfo:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray."""
    import ray

    address = resolve_address(address)
    if ray.is_initialized():
        ray.shutdown()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # Without this a leftover RAY_ADDRESS="" or a stale session file could be picked up.
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    return describe(address)


def describe(address: str | None) -> ClusterInfo:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterInfo(address=address, nodes=nodes, cpus=float(res.get("CPU", 0.0)),
                       gpus=float(res.get("GPU", 0.0)), local=address is None)


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
