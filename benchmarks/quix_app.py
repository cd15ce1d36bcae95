"""The same job as a stream-replica worker, written as a Quix Streams application.

Consume the replication topic from the earliest offset with a fresh consumer group and state
dir, decode each record with the same fast-path validator as the worker
(``stream_replica.contract.decode``), and keep the latest state per key in Quix's RocksDB state
with the same sequence guard: a FullState replaces the state only when its sequence is higher
(or there is no state), a tombstone deletes it, a Delta or invalid record is refused.

Run by ``benchmarks.bench`` in its own process; stops on SIGTERM (Quix's own handler, which
commits and closes the state). Prints one JSON line when the first record is processed and
one with its counters when it stops.

Settings that differ from Quix's defaults, and why:

* ``use_changelog_topics=False``: the worker keeps no changelog either (the compacted topic is
  its own changelog); with a changelog Quix would also produce every state change.
* ``commit_interval`` (``--commit-interval``, bench default 1 s instead of 5 s): "done" is
  measured as "committed offsets == end offsets", so a long interval would add idle time.
* State values are msgpack (the default JSON serializer cannot hold ``bytes`` payloads).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import msgpack
from quixstreams import Application, State
from quixstreams.state.rocksdb import RocksDBOptions

from stream_replica.contract import ContractError, Entry, EntryType, Tombstone, decode

STATE_KEY = "s"


def build_app(args: argparse.Namespace) -> tuple[Application, dict[str, int]]:
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        use_changelog_topics=False,
        auto_create_topics=False,
        rocksdb_options=RocksDBOptions(
            dumps=lambda v: msgpack.packb(v, use_bin_type=True),
            loads=lambda b: msgpack.unpackb(b, raw=False),
        ),
        loglevel=args.log_level,
    )
    topic = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    counts = {"records": 0, "applied": 0, "stale_or_duplicate": 0, "tombstones": 0, "refused": 0}

    def replicate(
        value: bytes | None, key: bytes | None, _ts: int, _h: Any, state: State[Any, Any]
    ) -> None:
        counts["records"] += 1
        if counts["records"] == 1:
            print(json.dumps({"first_record_at": time.time()}), flush=True)
        try:
            body = decode(key, value)
        except ContractError:
            counts["refused"] += 1
            return
        if isinstance(body, Tombstone):
            counts["tombstones"] += 1
            state.delete(STATE_KEY)
            return
        assert isinstance(body, Entry)
        if body.entry_type is EntryType.DELTA:
            counts["refused"] += 1
            return
        current = state.get(STATE_KEY)
        if current is None or body.sequence > current[0]:
            state.set(
                STATE_KEY,
                [body.sequence, body.timestamp_millis, body.source_cluster, body.payload],
            )
            counts["applied"] += 1
        else:
            counts["stale_or_duplicate"] += 1

    sdf = app.dataframe(topic)
    sdf.update(replicate, stateful=True, metadata=True)
    return app, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    app, counts = build_app(args)
    app.run()
    print(json.dumps({"counts": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
