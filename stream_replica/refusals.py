"""Kafka refusing a client past the connection: an ACL refusal (TOPIC_, GROUP_ or
CLUSTER_AUTHORIZATION_FAILED) or rejected credentials, arriving at fetch, join, heartbeat,
commit or send time, or when an idempotent producer starts. As the one line an operator acts
on (who was refused, on what, what to grant, which flag to check) and exit 2
(errors.KafkaAccessError): retrying cannot fix an ACL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from stream_replica.errors import KafkaAccessError

if TYPE_CHECKING:  # (clients.py uses this module when a producer cannot start)
    from stream_replica.connection import ConnectionSettings


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the broker authorizes, as far as the client knows it."""

    described: str  # for the operator
    grantee: str  # what an ACL names
    flag: str  # the flag that sets it


def principal(settings: ConnectionSettings) -> Principal:
    if settings.security_protocol.startswith("SASL_"):
        user = settings.sasl_username
        return Principal(f"user {user!r}", f"User:{user}", "--sasl-username")
    if settings.ssl_certfile is not None:
        # Kafka's principal is then the certificate's subject (unless the broker maps it).
        return Principal(
            f"the certificate {settings.ssl_certfile}",
            "the certificate's principal",
            "--ssl-certfile",
        )
    # Neither SASL nor a client certificate: Kafka's default principal builder says so.
    return Principal("User:ANONYMOUS", "User:ANONYMOUS", "--security-protocol")


def refusal(
    exc: BaseException,
    settings: ConnectionSettings,
    *,
    doing: str,
    topic: str,
    group: str | None = None,
    group_doing: str | None = None,
    topic_needs: str = "Read",
    topic_flag: str = "--topic",
) -> KafkaAccessError | None:
    """The line for ``exc`` if Kafka refused us, else None. ``doing``: what was refused (e.g.
    "fetching"; ``group_doing`` if the group was, when that differs); ``topic_needs``: the
    ACL operation that takes on ``topic``."""
    who = principal(settings)
    if isinstance(exc, SaslAuthenticationFailed):
        return KafkaAccessError(
            f"Kafka rejected the credentials of {who.described} while {doing} (SASL "
            f"authentication failed): check {who.flag} and the password"
        )
    if isinstance(exc, ClusterAuthorizationFailedError):
        # Our producers are idempotent: InitProducerId takes IdempotentWrite on the cluster,
        # which Kafka implies from Write on any topic.
        return KafkaAccessError(
            f"Kafka refused {who.described} on the cluster while {doing} "
            f"(CLUSTER_AUTHORIZATION_FAILED): an idempotent producer needs IdempotentWrite, "
            f"which Write on topic {topic!r} implies: grant {who.grantee} Write on it (an "
            f"ACL), or check {topic_flag} and {who.flag}"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        what, flag, needs = f"topic {topic!r}", topic_flag, topic_needs
        code = "TOPIC_AUTHORIZATION_FAILED"
    elif isinstance(exc, GroupAuthorizationFailedError):
        # Joining, heartbeats and commits all take Read on the group.
        what, flag, needs = f"group {group!r}", "--group", "Read"
        code = "GROUP_AUTHORIZATION_FAILED"
        doing = group_doing or doing
    else:
        return None
    return KafkaAccessError(
        f"Kafka refused {who.described} on {what} while {doing} ({code}): grant "
        f"{who.grantee} {needs} on {what} (an ACL), or check {flag} and {who.flag}"
    )
