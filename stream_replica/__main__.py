"""Entry point (``stream-replica`` and ``python -m stream_replica``).

Stop signals that arrive while the interpreter is still importing the heavy modules are
recorded, not fatal: a worker told to stop during start-up still exits cleanly with 0.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

early_signals: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    early_signals.append(signum)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _record)
    from stream_replica.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
