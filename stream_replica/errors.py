"""The errors stream-replica reports to an operator: one base class, one subclass per kind of
failure a user can act on. Each message is one line naming what was wrong and where; the CLI
prints it and exits with the class's code, never with a stack trace.

Exit codes (README "Exit codes"): 1 a failure at run time (Kafka unreachable, a worker that
cannot go on), 2 misconfiguration (settings, credentials, certificates, ACLs, a topic that does
not exist), 3 a replicated topic that is not compacted."""

from __future__ import annotations

from typing import ClassVar


class StreamReplicaError(Exception):
    """Base of every error meant for the operator."""

    exit_code: ClassVar[int] = 1


class ConfigurationError(StreamReplicaError):
    """A setting is wrong or missing: fix the flags or the environment."""

    exit_code = 2


class KafkaAccessError(ConfigurationError):
    """Kafka refused us for a reason retrying cannot fix: credentials, an untrusted
    certificate, or an ACL."""


class TopicNotCompactedError(ConfigurationError):
    """The replicated topic is not compacted (``cleanup.policy`` without ``compact``): its
    own exit code, which scripts check after ``topic create`` and ``topic describe``."""

    exit_code = 3


class KafkaUnavailableError(StreamReplicaError):
    """No broker answered (after the retries this command makes)."""


class FatalError(Exception):
    """Stops the worker with a one-line message and a non-zero exit."""
