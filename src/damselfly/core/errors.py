"""The small error vocabulary shared by every component.

Foreign exceptions (aiohttp, OSError, yaml) are translated into these at the boundary where they
enter, so that what a user finally sees is one line saying what happened and what to do.
"""

from __future__ import annotations


class DamselflyError(Exception):
    """Base of every error a user may see. ``str()`` is the one line printed."""

    #: short machine-readable code, used in JSON error bodies and metrics
    code = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DamselflyError):
    code = "config"


class BadRequest(DamselflyError):
    """A request from the network that is malformed or out of bounds."""

    code = "bad_request"


class OriginError(DamselflyError):
    """The origin answered with an error or could not be reached."""

    code = "origin_error"

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class OriginNotFound(OriginError):
    code = "origin_not_found"


class OriginAuthError(OriginError):
    code = "origin_auth"


class OriginChanged(OriginError):
    """The origin's content changed while we were reading it (ETag/length mismatch)."""

    code = "origin_changed"


class NoSpaceError(DamselflyError):
    code = "no_space"


class IntegrityError(DamselflyError):
    """Bytes did not match their digest."""

    code = "integrity"


class SupernodeUnavailable(DamselflyError):
    code = "no_supernode"


class PieceFetchError(DamselflyError):
    """One piece could not be fetched from one source (the download goes on elsewhere)."""

    code = "piece_fetch"

    def __init__(self, message: str, kind: str = "http") -> None:
        super().__init__(message)
        self.kind = kind


# Back-source / result reasons, numbered as in Dragonfly v1 so scripts keep working.
REASON_NONE = 0
REASON_REGISTER_FAIL = 1
REASON_MD5_MISMATCH = 2
REASON_DOWNLOAD_ERROR = 3
REASON_NO_SPACE = 4
REASON_NO_SUPERNODE = 8
REASON_SOURCE_ERROR = 10
REASON_USER_SOURCE = 100
