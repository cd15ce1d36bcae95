"""Command-line flags derived from the settings models: one source of truth per option.

Each pydantic field becomes ``--field-name`` with the field's description as help, a type
and choices from its annotation, and no default of its own (``None``), so pydantic-settings
can layer flags > environment (``STREAM_REPLICA_<FIELD>``) > model defaults. Secrets are
accepted as flags but their help says to prefer the environment or a file, and no default
is ever shown.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def env_name(name: str) -> str:
    """The environment variable of the setting ``name``."""
    if name == "bootstrap_servers":
        return "KAFKA_BOOTSTRAP_SERVERS"
    return f"STREAM_REPLICA_{name.upper()}"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_label(name: str) -> str:
    """How an error names the setting ``name``: ``--ssl-cafile (env STREAM_REPLICA_SSL_CAFILE)``."""
    return f"{flag_name(name)} (env {env_name(name)})"


def _shown_default(default: Any) -> str:
    """The help's "; default ..." part. Only None (the description says what happens then)
    and an empty list are left out: ``0 == False``, so a membership test hid every 0."""
    if default is None or (isinstance(default, list) and not default):
        return ""
    if isinstance(default, bool):
        return "; default on" if default else "; default off"
    return f"; default {default}"


def add_model_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Add a flag per field of ``model``; returns the field names added."""
    wanted = set(only) if only is not None else None
    skipped = set(exclude)
    added = []
    for name, info in model.model_fields.items():
        if (wanted is not None and name not in wanted) or name in skipped:
            continue
        flag = flag_name(name)
        annotation = _unwrap_optional(info.annotation)
        text = info.description or ""
        env = env_name(name)
        options: dict[str, Any] = {"dest": name, "default": None}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list:
            options["action"] = "append"
            options["metavar"] = "NAME=VALUE"
        elif typing.get_origin(annotation) is Literal:
            options["choices"] = list(typing.get_args(annotation))
        elif annotation is int:
            options["type"] = int
        elif annotation is float:
            options["type"] = float
        elif annotation is Path:
            options["metavar"] = "PATH"
        if annotation is SecretStr:
            text = f"{text} (secret: prefer env {env}; never shown)"
        else:
            if info.is_required():
                shown = "; required"
            else:
                shown = _shown_default(info.get_default(call_default_factory=True))
            text = f"{text} (env {env}{shown})" if text else f"env {env}{shown}"
        options["help"] = text
        parser.add_argument(flag, **options)
        added.append(name)
    return added


def settings_from(cls: type[S], args: argparse.Namespace, names: Iterable[str] | None = None) -> S:
    """Build ``cls`` from the flags the user gave (others come from env and defaults)."""
    fields = cls.model_fields if names is None else names
    given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    return cls(**given)
