"""The worker's pre-flight (stream_replica/preflight.py): stopping while it waits for Kafka."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import finish, read_until


def test_sigterm_while_kafka_accepts_and_never_answers_stops_at_once(tmp_path: Path) -> None:
    """A bootstrap address that accepts connections and never answers (a hung broker, a
    firewall that accepts) held the first request for its whole timeout: SIGTERM took 36 s,
    past Kubernetes' 30 s grace period. Stopping now cancels the request."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # nothing is ever answered
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "stream_replica", "run", "--bootstrap-servers", address,
                "--topic", "t", "--group", "g", "--db", str(tmp_path / "db"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            read_until(worker, "RocksDB compactions")  # the last line before it calls Kafka
            silent.settimeout(30)
            held, _ = silent.accept()  # the worker is inside its first request
            with held:
                sent = time.monotonic()
                worker.send_signal(signal.SIGTERM)
                rest = finish(worker, timeout=45)
                stopped_s = time.monotonic() - sent
        finally:
            if worker.poll() is None:
                worker.kill()
    assert worker.returncode == 0, rest
    assert "stopped before the broker was reached" in rest, rest
    # The request's own timeout is 30 s: ending well before it means it was cancelled.
    assert stopped_s < 10, (stopped_s, rest)
