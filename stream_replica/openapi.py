"""The OpenAPI 3.1 description of the read API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any


def openapi() -> dict[str, Any]:
    grain = {
        "type": "object",
        "properties": {
            "grain_type": {"type": "string"},
            "grain_key": {"type": "string"},
            "sequence": {"type": "integer"},
            "timestamp_millis": {"type": "integer"},
            "source_cluster": {"type": "string"},
            "payload": {"type": "string", "format": "byte"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "served_by": {"type": "string"},
            "role": {"type": "string", "enum": ["active", "standby"]},
            "replica_lag": {"type": "integer"},
            "caught_up": {"type": "boolean"},
        },
    }
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}  # fmt: skip
    stale = {"name": "stale", "in": "query", "schema": {"type": "string", "enum": ["ok"]}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "stream-replica read API", "version": "1"},
        "components": {
            "schemas": {
                "Grain": grain,
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/grains/{grain_type}/{grain_key}": {
                "get": {
                    "summary": "One grain's state with its freshness, from the partition's "
                    "owner (any worker forwards)",
                    "parameters": [
                        {"name": "grain_type", "in": "path", "required": True},
                        {
                            "name": "grain_key",
                            "in": "path",
                            "required": True,
                            "description": "URL-encoded; may contain '/'",
                        },
                        stale,
                        {"name": "min_sequence", "in": "query", "schema": {"type": "integer"}},
                        {"name": "wait_ms", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the grain (application/octet-stream: the raw "
                            "payload, metadata in X-Grain-* and X-Replica-* headers)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Grain"}
                                },
                                "application/octet-stream": {},
                            },
                        },
                        "401": err,
                        "404": err,
                        "503": err,
                        "504": err,
                    },
                }
            },
            "/grains/{grain_type}": {
                "get": {
                    "summary": "A page of grains of one type in key order across partitions",
                    "parameters": [
                        {"name": "grain_type", "in": "path", "required": True},
                        {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        stale,
                    ],
                    "responses": {"200": {"description": "items and next_cursor"}, "503": err},
                }
            },
            "/partitions": {
                "get": {
                    "summary": "The ownership map: replicas of each partition with their "
                    "checkpoints and lag",
                    "responses": {"200": {"description": "the map"}},
                }
            },
            "/healthz": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
        },
    }
