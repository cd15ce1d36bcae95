"""refusals.py without a broker: which errors are refusals, and who the line says was refused
(the SASL user is covered against a real broker in test_security.py)."""

from __future__ import annotations

from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from stream_replica.connection import ConnectionSettings
from stream_replica.refusals import refusal


def test_without_sasl_or_a_certificate_the_principal_is_anonymous() -> None:
    refused = refusal(
        TopicAuthorizationFailedError("t"), ConnectionSettings(), doing="fetching", topic="t"
    )
    assert refused is not None and refused.exit_code == 2
    assert str(refused) == (
        "Kafka refused User:ANONYMOUS on topic 't' while fetching (TOPIC_AUTHORIZATION_FAILED): "
        "grant User:ANONYMOUS Read on topic 't' (an ACL), or check --topic and "
        "--security-protocol"
    )


def test_a_group_refusal_names_the_group_and_what_was_done() -> None:
    refused = refusal(
        GroupAuthorizationFailedError("g"),
        ConnectionSettings(),
        doing="fetching",
        group_doing="joining it",
        topic="t",
        group="g",
    )
    assert str(refused).startswith(
        "Kafka refused User:ANONYMOUS on group 'g' while joining it (GROUP_AUTHORIZATION_FAILED)"
    )
    assert "check --group" in str(refused)


def test_an_outage_is_no_refusal() -> None:
    error = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    assert refusal(error, ConnectionSettings(), doing="fetching", topic="t") is None
