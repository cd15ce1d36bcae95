"""--http-token-file refusals name the file, never any of the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_replica.errors import ConfigurationError
from stream_replica.node import read_token


def test_a_token_file_not_in_utf8_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"s3cret\xfe-token\n")
    with pytest.raises(ConfigurationError) as refused:
        read_token(path)
    assert str(refused.value) == f"--http-token-file {path}: not UTF-8 text"
    assert "0xfe" not in str(refused.value)
