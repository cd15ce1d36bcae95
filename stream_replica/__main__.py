"""Entry point (``stream-replica`` and ``python -m stream_replica``).

For ``run``, stop signals are handled from the first instant (before the heavy imports), so a
worker told to stop while starting up still exits cleanly with 0.
"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        from stream_replica import _signals

        _signals.install()
    from stream_replica.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
