"""Run a zoo spec in this process, shard after shard, into a Zarr store.

The single-machine path from a zoo spec to a store; the Ray pipeline (``pipelines/``) runs
the same shards in parallel on a cluster. Shards already complete in the store are skipped
when ``resume`` is set, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from rulefinder.store import ZooStore
from training_zoo.shard import run_shard
from training_zoo.spec import expand_spec, load_spec

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parent / "zoo_specs"


def resolve_spec(name_or_path: str) -> Path:
    """A spec name shipped with the package (``smoke``, ``default``, ``large``) or a YAML path."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SPEC_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"{name_or_path}: no such spec file or shipped spec (shipped: {known})")


def run_zoo(
    spec: str | Path | dict,
    store_url: str,
    *,
    device: str = "cpu",
    resume: bool = False,
    max_shards: int | None = None,
    progress: bool = True,
) -> dict:
    """Train every shard of ``spec`` and write it into the store at ``store_url``.

    Returns counts: shards run and skipped, networks written, networks diverged.
    """
    spec_dict = load_spec(resolve_spec(spec) if isinstance(spec, (str, Path)) else spec)
    shards = expand_spec(spec_dict)
    if max_shards is not None:
        shards = shards[:max_shards]
    store = ZooStore.create(store_url, exist_ok=True)
    # The one resume rule, shared with the Ray pipeline (pipelines/run.py).
    done = store.complete_shards() if resume else set()
    counts = {"shards": len(shards), "run": 0, "skipped": 0, "networks": 0, "diverged": 0}
    bar = tqdm(shards, desc=f"zoo {spec_dict.get('name', '')}", unit="shard", disable=not progress)
    for shard in bar:
        if shard.shard_id in done:
            counts["skipped"] += 1
            continue
        bar.set_postfix_str(f"{shard.rule}/{shard.optimizer}/{shard.task}")
        records = run_shard(shard, device=device)
        store.write_shard(records, shard.shard_id, overwrite=True)
        counts["run"] += 1
        counts["networks"] += len(records)
        counts["diverged"] += sum(r.diverged for r in records)
    store.consolidate()
    log.info("zoo run into %s: %s", store_url, counts)
    return counts
