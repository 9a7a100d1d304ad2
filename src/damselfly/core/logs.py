"""Logging set-up shared by every process: human-readable by default, JSON on request, files
rotated by size so long-running processes never fill the disk.

``--log-format text|json``, ``--log-max-size SIZE`` and ``--log-backups N`` are parsed here once
into a ``LogConfig``. JSON is one object per line: ``time``, ``level``, ``logger``, ``message``,
plus the structured fields a caller passed with ``extra=fields(...)``. Nothing logs header
values: callers log URLs through ``ids.redact_url`` and never pass headers to a logger.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from damselfly.core.errors import ConfigError
from damselfly.core.units import parse_size

LOG_FORMATS = ("text", "json")
# a long-running engine or supernode keeps at most (1 + backups) × max_bytes of logs: 300 MiB
LOG_MAX_BYTES = 50 * 1024 * 1024
LOG_BACKUPS = 5
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: structured fields travel on the record under this one attribute (see ``fields``)
FIELDS_ATTR = "damselfly_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("…", extra=fields(task_id=…, length=…))``: fields a JSON line carries as its
    own keys (the text format shows only the message, so put what matters in it too)."""
    return {FIELDS_ATTR: values}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the fixed keys cannot be overwritten by a field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        extra = getattr(record, FIELDS_ATTR, None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                out.setdefault(str(key), value)
        # default=str: a stray non-JSON value (a Path) must not lose the line; ASCII-only
        # output never fails on a console with a narrow encoding
        return json.dumps(out, default=str)


def formatter(fmt: str, text_format: str = TEXT_FORMAT) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(text_format)


def validate_log_format(value: str, what: str = "--log-format") -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"invalid {what} {value!r}", "use text or json")
    return value


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"
    max_bytes: int = LOG_MAX_BYTES
    backups: int = LOG_BACKUPS

    def argv(self) -> list[str]:
        """The flags that give a child process (a background engine) this config."""
        out: list[str] = []
        if self.format != "text":
            out += ["--log-format", self.format]
        if self.max_bytes != LOG_MAX_BYTES:
            out += ["--log-max-size", str(self.max_bytes)]
        if self.backups != LOG_BACKUPS:
            out += ["--log-backups", str(self.backups)]
        return out

    def file_handler(self, path: Path) -> logging.Handler:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
        )
        fh.setFormatter(formatter(self.format))
        return fh


def add_log_flags(ap: argparse.ArgumentParser) -> None:
    """The log flags every long-running process takes (values checked by ``log_config``)."""
    ap.add_argument(
        "--log-format", help="text (default: human-readable) or json (one object per line)"
    )
    ap.add_argument(
        "--log-max-size", help="rotate a log file at this size, e.g. 50M (default 50M; 0: never)"
    )
    ap.add_argument("--log-backups", help="rotated log files kept (default 5)")


def log_config(ns: argparse.Namespace, base: LogConfig | None = None) -> LogConfig:
    """The flags of ``add_log_flags`` over ``base`` (defaults, or a config file's values)."""
    base = base or LogConfig()
    fmt = getattr(ns, "log_format", None)
    size = getattr(ns, "log_max_size", None)
    backups = getattr(ns, "log_backups", None)
    return make_log_config(
        fmt if fmt is not None else base.format,
        parse_size(size, "--log-max-size") if size is not None else base.max_bytes,
        _backups(backups) if backups is not None else base.backups,
    )


def make_log_config(fmt: str, max_bytes: int, backups: int) -> LogConfig:
    validate_log_format(fmt)
    if max_bytes < 0:
        raise ConfigError(f"invalid --log-max-size {max_bytes}", "give a size such as 50M")
    if not 0 <= backups <= 1000:
        raise ConfigError(f"invalid --log-backups {backups}", "give a number 0..1000")
    return LogConfig(fmt, max_bytes, backups)


def _backups(value: str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid --log-backups {value!r}", "give a number 0..1000") from e


def setup_logging(
    verbose: bool = False,
    console: bool = True,
    log_file: Path | None = None,
    fmt: str | LogConfig = "text",
) -> None:
    """The root logger of a process: stderr and/or a rotated file, in one format."""
    cfg = fmt if isinstance(fmt, LogConfig) else LogConfig(validate_log_format(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if console:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(formatter(cfg.format))
        root.addHandler(sh)
    if log_file is not None:
        root.addHandler(cfg.file_handler(log_file))
    # aiohttp's access log would print request lines; URLs there may carry signatures.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
