"""Command-line flags derived from the settings models: one source of truth per option.

Each pydantic field becomes ``--field-name`` with the field's description as help, a type
and choices from its annotation, and no default of its own (``None``), so pydantic-settings
can layer flags > environment (``STREAM_REPLICA_<FIELD>``) > model defaults. Secrets
(``SecretStr`` fields) come from the environment or a file only: their flag exists, hidden, to
refuse the value in one line (never echoed) and say where to put it instead, since a command
line shows in ``ps``, ``/proc/PID/cmdline`` and shell history.
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


# Settings that are secrets: no command-line value (see the module docstring); each has a
# ``<name>_file`` setting beside it.
SECRETS: frozenset[str] = frozenset({"sasl_password", "ssl_key_password"})


def option_label(name: str) -> str:
    """How an error names the setting ``name``: ``--ssl-cafile (env STREAM_REPLICA_SSL_CAFILE)``
    (a secret: ``env STREAM_REPLICA_SASL_PASSWORD or --sasl-password-file``)."""
    if name in SECRETS:
        return f"env {env_name(name)} or {flag_name(name + '_file')}"
    return f"{flag_name(name)} (env {env_name(name)})"


class _SecretFlag(argparse.Action):
    """A secret given on the command line: refused without echoing it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{self.option_strings[0]}: a secret is not taken on the command line (ps and "
            f"shell history show it); use {option_label(self.dest)}"
        )


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
            parser.add_argument(flag, dest=name, action=_SecretFlag, help=argparse.SUPPRESS)
            continue
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
