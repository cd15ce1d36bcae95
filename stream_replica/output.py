"""What commands print: one JSON object per line on stdout (the result), and the one line an
operator reads on stderr when a command ends with a reason."""

from __future__ import annotations

import json
import sys
from typing import Any

from stream_replica import logs


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")


def fail(message: str) -> None:
    """The one line an operator reads on stderr: ``stream-replica: <message>``, even when
    the message (an exception's text) has line breaks; a JSON line with ``--log-format
    json``."""
    print(logs.fatal_line(message), file=sys.stderr)
