"""--http-token-file and --http-tls-key refusals: the file named, nothing of its secret, no prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_replica.errors import ConfigurationError
from stream_replica.node import read_token, tls_contexts
from stream_replica.settings import WorkerSettings


def test_a_token_file_not_in_utf8_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"s3cret\xfe-token\n")
    with pytest.raises(ConfigurationError) as refused:
        read_token(path)
    assert str(refused.value) == f"--http-token-file {path}: not UTF-8 text"
    assert "0xfe" not in str(refused.value)


def test_an_encrypted_http_tls_key_is_refused_without_a_prompt(pem: Path, tmp_path: Path) -> None:
    """OpenSSL asked for its password on the terminal ("Enter PEM pass phrase:", where a
    worker started from one waited), else failed with "[Errno 22] Invalid argument"."""
    settings = WorkerSettings(
        db=tmp_path / "db", http_tls_cert=pem / "a.pem", http_tls_key=pem / "a-enc.key"
    )
    with pytest.raises(ConfigurationError) as refused:
        tls_contexts(settings)
    assert str(refused.value).startswith(f"--http-tls-key {pem / 'a-enc.key'} is encrypted")
