"""The shared key of authenticated bitstreams (HMAC-SHA256, ``codecs/bitstream.py``), read from a file."""

from __future__ import annotations

from pathlib import Path

from latentbridge.core.errors import DataError


def read_key(path: str | Path | None, key: str = "--key-file") -> bytes | None:
    """The file's bytes (stripped; at least 16), or None without a file. ``key`` names the setting in errors."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise DataError(f"{key}: {path}: cannot read ({e.strerror})") from None
    if len(data) < 16:
        raise DataError(f"{key}: {path} holds {len(data)} bytes; a key needs at least 16")
    return data
