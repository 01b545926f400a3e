"""``store_info``: what a zoo store holds, for ``rulefinder store info PATH [--json]``."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from rulefinder.store import location
from rulefinder.store.zoo_store import ZooStore


class StoreInfo(BaseModel):
    """Counts by rule, architecture and task (complete networks only), size and completeness."""

    url: str
    schema_version: int
    shards: int
    networks: int = Field(description="networks listed, complete or not")
    complete: int
    incomplete: int
    diverged: int = Field(description="complete networks whose loss became non-finite")
    networks_per_rule: dict[str, int]
    networks_per_architecture: dict[str, int]
    networks_per_task: dict[str, int]
    networks_per_optimizer: dict[str, int]
    bytes_on_disk: int
    bytes_per_network: float | None = Field(description="bytes on disk / complete networks")
    consolidated: bool
    incomplete_networks: list[str] = Field(description="ids of incomplete networks (first 100)")

    def to_text(self) -> str:
        def block(title: str, counts: dict[str, int]) -> list[str]:
            if not counts:
                return [f"{title}: none"]
            width = max(len(k) for k in counts)
            return [f"{title}:"] + [f"  {k:<{width}}  {v}" for k, v in counts.items()]

        size = _human_bytes(self.bytes_on_disk)
        per_net = f" ({_human_bytes(self.bytes_per_network)} per network)" if self.bytes_per_network else ""
        lines = [
            f"zoo store {self.url}",
            f"schema version {self.schema_version}, {self.shards} shard(s), "
            f"{'consolidated' if self.consolidated else 'not consolidated'}",
            f"networks: {self.networks} listed, {self.complete} complete, "
            f"{self.incomplete} incomplete, {self.diverged} diverged",
            f"size on disk: {size}{per_net}",
            *block("per rule", self.networks_per_rule),
            *block("per architecture", self.networks_per_architecture),
            *block("per task", self.networks_per_task),
            *block("per optimizer", self.networks_per_optimizer),
        ]
        if self.incomplete_networks:
            more = self.incomplete - len(self.incomplete_networks)
            lines.append(
                "incomplete: " + ", ".join(self.incomplete_networks) + (f" and {more} more" if more > 0 else "")
            )
        return "\n".join(lines)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def store_info(url: str, *, storage_options: dict | None = None) -> StoreInfo:
    store = ZooStore.open(str(url), storage_options=storage_options)
    table = store.networks()
    complete = table["complete"].values
    diverged = table["diverged"].values & complete

    def counts(field: str) -> dict[str, int]:
        return dict(sorted(Counter(table[field].values[complete].tolist()).items()))

    size = location.bytes_on_disk(str(url), storage_options)
    n_complete = int(complete.sum())
    return StoreInfo(
        url=str(url),
        schema_version=store.schema_version,
        shards=len(store.shard_ids()),
        networks=int(table.sizes["network"]),
        complete=n_complete,
        incomplete=int((~complete).sum()),
        diverged=int(diverged.sum()),
        networks_per_rule=counts("rule"),
        networks_per_architecture=counts("architecture"),
        networks_per_task=counts("task"),
        networks_per_optimizer=counts("optimizer"),
        bytes_on_disk=size,
        bytes_per_network=size / n_complete if n_complete else None,
        consolidated=store.is_consolidated,
        incomplete_networks=store.incomplete()[:100],
    )
