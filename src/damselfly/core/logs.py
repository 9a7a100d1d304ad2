"""Logging set-up shared by every process: human-readable by default, JSON on request, files
rotated so long-running processes never fill the disk. Nothing logs header values: callers log
URLs through ``ids.redact_url`` and never pass headers to a logger."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 3


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(
    verbose: bool = False,
    console: bool = True,
    log_file: Path | None = None,
    fmt: str = "text",
) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    if console:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(formatter)
        root.addHandler(sh)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS
        )
        fh.setFormatter(formatter)
        root.addHandler(fh)
    # aiohttp's access log would print request lines; URLs there may carry signatures.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
