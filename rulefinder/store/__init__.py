"""The zoo's observables in Zarr (via xarray): sharded, lazily read, safe to write in parallel.

See ``docs/store.md`` for the schema. Entry points: :class:`ZooStore` (``create``, ``open``,
``write_shard``, ``networks``, ``recording``, ``record``, ``iter_recordings``, ``incomplete``,
``consolidate``) and :func:`store_info`.
"""

from rulefinder.store.info import StoreInfo, store_info
from rulefinder.store.schema import SCHEMA_VERSION
from rulefinder.store.zoo_store import StoreError, StoreNotFoundError, ZooStore

__all__ = [
    "SCHEMA_VERSION",
    "StoreError",
    "StoreInfo",
    "StoreNotFoundError",
    "ZooStore",
    "store_info",
]
