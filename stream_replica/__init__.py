"""stream-replica: consumer-group workers that keep RocksDB read replicas of grain state
from a compacted Kafka topic (one full-state snapshot per grain change).

The public names are imported lazily so that ``python -m stream_replica`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ContractError": "stream_replica.contract",
    "Entry": "stream_replica.contract",
    "EntryType": "stream_replica.contract",
    "Tombstone": "stream_replica.contract",
    "decode": "stream_replica.contract",
    "GrainState": "stream_replica.fold",
    "ReplicaReader": "stream_replica.store",
    "StoreError": "stream_replica.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_replica' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
