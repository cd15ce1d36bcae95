"""stream-replica: consumer-group workers that keep RocksDB read replicas of grain state
from a compacted Kafka topic (one full-state snapshot per grain change)."""

from stream_replica.contract import ContractError, Entry, EntryType, Tombstone, decode
from stream_replica.fold import GrainState
from stream_replica.store import ReplicaReader, StoreError

__all__ = [
    "ContractError",
    "Entry",
    "EntryType",
    "GrainState",
    "ReplicaReader",
    "StoreError",
    "Tombstone",
    "decode",
]
__version__ = "0.1.0"
