"""Administration helpers: what they raise when the cluster cannot be used."""

from __future__ import annotations

import pytest

from stream_replica import admin
from stream_replica.errors import KafkaUnavailableError


async def test_waiting_for_an_unreachable_broker_ends_as_unavailable_not_misconfigured() -> None:
    """Exit 1 (errors.py), where it was an AdminError that the command line exits 2 with."""
    with pytest.raises(KafkaUnavailableError, match=r"127\.0\.0\.1:1") as unavailable:
        await admin.wait_for_broker("127.0.0.1:1", timeout_s=0.5)
    assert unavailable.value.exit_code == 1


def test_admin_and_replay_refusals_exit_2_in_every_command() -> None:
    """main() mapped them to 2, but run used the class's code (1) for the same error."""
    from stream_replica.replay import ReplayError

    assert admin.AdminError("x").exit_code == 2 and ReplayError("x").exit_code == 2
