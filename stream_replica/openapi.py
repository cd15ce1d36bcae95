"""The OpenAPI 3.1 description of a worker's HTTP routes (served at ``/openapi.json``): the
read API (query_app.py), health and readiness, metrics and the status page (http_app.py).

tests/test_openapi.py validates it with openapi-spec-validator and checks real answers of a
running app against it: every field an answer has is documented, every required one there.
"""

from __future__ import annotations

from typing import Any

from stream_replica.query_request import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_SEQUENCE,
    MAX_WAIT_MS,
    RETRY_AFTER_S,
    STALE_VALUE,
)

_REF = "#/components/schemas/"
_INT: dict[str, Any] = {"type": "integer", "minimum": 0}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}} | extra


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    extra = {"headers": headers} if headers else {}
    return _json(description, _ref("Error"), **extra)


_RETRY = {
    "Retry-After": {
        "description": f"seconds to wait before retrying ({RETRY_AFTER_S})",
        "schema": {"type": "integer"},
    }
}
_BEARER = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
_FRESHNESS: dict[str, dict[str, Any]] = {
    "served_by": {"type": "string", "description": "the answering worker's endpoint"},
    "role": {"type": "string", "enum": ["active", "standby"]},
    "replica_lag": {**_INT, "description": "records the answering copy is behind its end"},
    "caught_up": {
        "type": "boolean",
        "description": "the copy holds the end offset the broker confirmed within "
        "--end-offset-max-age-s (false while Kafka is unreachable)",
    },
    "end_offset_age_s": {
        "type": ["number", "null"],
        "description": "seconds since the broker confirmed that end offset (null: not yet)",
    },
}


def _schemas() -> dict[str, Any]:
    grain_fields = {
        "grain_type": {"type": "string"},
        "grain_key": {"type": "string"},
        "sequence": _INT,
        "timestamp_millis": {"type": "integer"},
        "source_cluster": {"type": "string"},
        "payload": {"type": "string", "contentEncoding": "base64"},
        "partition": _INT,
        "offset": _INT,
    }
    replica = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "endpoint": {"type": ["string", "null"]},
            "role": {"type": "string", "enum": ["active", "standby"]},
            "reachable": {"type": "boolean"},
            "checkpoint": {**_INT, "description": "present when reachable"},
            "lag": {**_INT, "description": "present when reachable"},
            "caught_up": {"type": "boolean", "description": "present when reachable"},
        },
        "required": ["name", "endpoint", "role", "reachable"],
    }
    return {
        "Grain": {
            "type": "object",
            "description": "A grain's state, with the freshness of the copy that answered",
            "properties": grain_fields
            | {
                "shadowed_by_offset": {
                    **_INT,
                    "description": "present when a later record on the grain's key was "
                    "refused or ignored (the state may be stale; see `audit`)",
                }
            }
            | _FRESHNESS,
            "required": [*grain_fields, *_FRESHNESS],
        },
        "ScanPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("Grain")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "pass as ?cursor= for the next page; null: the last page",
                },
                "more": {
                    "type": "boolean",
                    "description": "only with ?partitions=: whether those partitions hold more",
                },
            },
            "required": ["items", "next_cursor"],
        },
        "Partitions": {
            "type": "object",
            "properties": {
                "topic": {"type": "string"},
                "partition_count": {"type": ["integer", "null"]},
                "epoch": {"type": "integer", "description": "grows with every assignment"},
                "scheme": {"type": "string", "enum": ["http", "https"]},
                "forward_timeout_s": {
                    "type": "number",
                    "description": "how long a worker waits for the worker it forwards to; "
                    "a client should wait longer for a worker (the Python client: +2 s)",
                },
                "partitions": {
                    "type": "object",
                    "description": "by partition number",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "end_offset": {"type": ["integer", "null"]},
                            "replicas": {
                                "type": "array",
                                "description": "the active replica first",
                                "items": replica,
                            },
                        },
                        "required": ["end_offset", "replicas"],
                    },
                },
            },
            "required": [
                "topic",
                "partition_count",
                "epoch",
                "scheme",
                "forward_timeout_s",
                "partitions",
            ],
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "description": "one line"},
                "sequence": {
                    "type": ["integer", "null"],
                    "description": "504: the sequence held (null: none)",
                },
                "partitions": {
                    "type": "array",
                    "items": _INT,
                    "description": "a scan's 503: the partitions no replica answered for",
                },
            }
            | {
                k: {**v, "description": "404: the copy that answered"}
                for k, v in _FRESHNESS.items()
            },
            "required": ["error"],
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


_STALE = _query(
    "stale",
    {"type": "string", "enum": [STALE_VALUE]},
    "accept a possibly stale answer: a standby's, or a copy being rebuilt (tried last); "
    "any other value is a 400",
)
_GRAIN_TYPE = {
    "name": "grain_type",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    "description": "percent-encoded; must not contain '/'",
}


def _health(
    ok: str, failing: str, ok_fields: dict[str, Any], failing_fields: dict[str, Any]
) -> dict[str, Any]:
    def schema(fields: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"status": {"type": "string"}, "reason": {"type": "string"}} | fields,
            "required": ["status"],
        }

    return {
        "get": {
            "security": [],
            "responses": {
                "200": _json(ok, schema(ok_fields)),
                "503": _json(failing, schema(failing_fields)),
            },
        }
    }


def openapi() -> dict[str, Any]:
    bad = _error("a grain or parameter refused (the one line names it)")
    upstream = _error(
        "a worker this one asked refused it (a 401: the workers' --http-token-file differ) "
        "or failed; the one line names it. Another worker may answer",
        **_RETRY,
    )
    unauthorized = _error("missing or wrong bearer token (--http-token-file)", **_BEARER)
    return {
        "openapi": "3.1.0",
        "info": {"title": "stream-replica worker API", "version": "1"},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/grains/{grain_type}/{grain_key}": {
                "get": {
                    "summary": "One grain's state with its freshness, from the partition's "
                    "owner (any worker forwards)",
                    "parameters": [
                        _GRAIN_TYPE,
                        {
                            "name": "grain_key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                            "description": "percent-encoded; may contain '/' (as %2F) and "
                            "any other character",
                        },
                        _STALE,
                        _query(
                            "min_sequence",
                            {**_INT, "maximum": MAX_SEQUENCE, "default": 0},
                            "answer only once the grain holds at least this sequence (with "
                            "wait_ms)",
                        ),
                        _query(
                            "wait_ms",
                            {**_INT, "maximum": MAX_WAIT_MS, "default": 0},
                            "how long to wait for min_sequence (504 when not reached)",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "the grain (Accept: application/octet-stream: the "
                            "raw payload, the fields in X-Grain-* and X-Replica-* headers, "
                            "non-ASCII percent-encoded)",
                            "content": {
                                "application/json": {"schema": _ref("Grain")},
                                "application/octet-stream": {},
                            },
                        },
                        "400": bad,
                        "401": unauthorized,
                        "404": _error(
                            "not found: the copy has read the partition up to its end offset "
                            "of when the read came (a copy a few records behind is waited for, "
                            "1 s at most), confirmed by the broker within "
                            "--end-offset-max-age-s"
                        ),
                        "503": _error(
                            "the partition is being rebuilt, or its owner is down or moving; "
                            "retry (or pass ?stale=ok)",
                            **_RETRY,
                        ),
                        "502": upstream,
                        "504": _error("min_sequence not reached within wait_ms", **_RETRY),
                    },
                }
            },
            "/grains/{grain_type}": {
                "get": {
                    "summary": "A page of grains of one type in key order across partitions",
                    "parameters": [
                        _GRAIN_TYPE,
                        _query(
                            "prefix", {"type": "string", "default": ""}, "grain keys starting so"
                        ),
                        _query(
                            "limit",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                            "grains per page",
                        ),
                        _query("cursor", {"type": "string"}, "a page's next_cursor"),
                        _STALE,
                        _query(
                            "partitions",
                            {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
                            "a fan-out's step between workers: only these partitions, only "
                            "from this worker's store (no forwarding); applications leave it out",
                        ),
                    ],
                    "responses": {
                        "200": _json("a page", _ref("ScanPage")),
                        "400": bad,
                        "401": unauthorized,
                        "502": upstream,
                        "503": _error(
                            "a partition could not be read: its replicas are down, being "
                            "rebuilt, or behind the end offset of when the page was asked for "
                            "(not reached within 1 s, or not confirmed lately: Kafka "
                            "unreachable). Never a partial page; retry, or pass ?stale=ok",
                            **_RETRY,
                        ),
                    },
                }
            },
            "/partitions": {
                "get": {
                    "summary": "The ownership map: replicas of each partition with their "
                    "checkpoints and lag",
                    "responses": {
                        "200": _json("the map", _ref("Partitions")),
                        "401": unauthorized,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "security": [],
                    "responses": {"200": _json("this document", {"type": "object"})},
                }
            },
            "/healthz": _health(
                "the loop polls, or has not polled yet and says what it waits for",
                "no poll within --health-max-poll-age-s",
                {
                    "last_poll_age_s": {"type": "number"},
                    "waiting_for_kafka": {
                        "type": "string",
                        "description": "before the first poll: what the worker waits for",
                    },
                },
                {"max_poll_age_s": {"type": "number"}},
            ),
            "/readyz": _health(
                "every served partition within --ready-max-lag records",
                "no assignment yet, end offsets not confirmed, or partitions behind",
                {"partitions": {"type": "integer", "description": "partitions served"}},
                {
                    "partitions": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": "those whose end offsets the broker has not confirmed "
                        "(lately, or yet)",
                    },
                    "lag": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            ),
            "/metrics": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/status.json": {
                "get": {
                    "security": [],
                    "responses": {"200": _json("what the status page shows", {"type": "object"})},
                }
            },
            "/": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the status page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
