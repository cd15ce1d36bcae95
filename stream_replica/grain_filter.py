"""Which grains may have a stored state: a Bloom filter of every grain given a state since the
store last held none, so that a grain it rules out is known to have no state without a read.

The head cache (store_heads.py) answers for the grains it holds. A grain it lacks used to cost a
RocksDB multi-get (its state and its index entry), and on a store of millions of grains those
reads miss the block cache and load index, filter and data blocks from the table files: a
build or rebuild into an empty store then spent most of its RocksDB reads learning that a new
grain had no state yet, and a cold multi-get held the event loop for up to ~100 ms. With this
filter such a grain costs one filter test (~50-100 ns).

Never a false "no", as long as the store adds a grain *before* the write that gives it a
state (a failed write leaves a "maybe" behind, which costs only the read it would have cost
anyway); grains whose states are deleted later stay in it (a "maybe" too). So it is exact
where it says "no" and it only grows. It is started when the store holds no state (opened
empty, or wiped): a store opened with states has no filter, since building one would mean
reading every grain.

The filter is rbloom's (Rust), keyed by Python's hash of the grain's key body: bytes cache
their hash, and the head cache's dict lookup already computed it; the hash differs between
processes, which is fine for a structure that lives in one. Its size is fixed by the memory
plan, not by the number of grains: it is laid out for ``DESIGN_BITS_PER_GRAIN`` and degrades
gently past that (false "maybe"s measured on 200,000 random keys: ~0.1 % at 16 bits per grain,
~1 % at 10, ~6 % at 6; tests/test_grain_filter.py holds them under 1, 3 and 10 %).
"""

from __future__ import annotations

import math
from typing import Final

from rbloom import Bloom

# The false "maybe" rate the filter is laid out for (its number of hash functions), reached at
# ~8 bits per grain: 1M grains in the default plan's 14 MiB get ~120 bits each, 10M ~12.
DESIGN_FALSE_MAYBES: Final = 0.02
DESIGN_BITS_PER_GRAIN: Final = -math.log(DESIGN_FALSE_MAYBES) / math.log(2) ** 2


def new_grain_filter(size_bytes: int) -> Bloom:
    """An empty filter of about ``size_bytes``: ``add(body)``, ``body in it``."""
    grains = max(1, int(8 * size_bytes / DESIGN_BITS_PER_GRAIN))
    return Bloom(grains, DESIGN_FALSE_MAYBES)
