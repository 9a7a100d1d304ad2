"""Reading a command's config file: the one named by ``--config`` (which must exist), else the
system-wide default when present, else none. Bounded in size; errors name the file."""

from __future__ import annotations

import os

from damselfly.core.errors import ConfigError

MAX_CONFIG = 1024 * 1024


def read_config_file(path: str | None, default: str) -> tuple[bytes, str] | None:
    """The file's bytes and its path, or None when no ``--config`` was given and ``default``
    does not exist."""
    if path is None:
        if not os.path.exists(default):
            return None
        path = default
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}", "check --config") from e
    if len(text) > MAX_CONFIG:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG} bytes")
    return text, path
