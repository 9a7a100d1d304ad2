"""Parsing of the human units used on command lines and in config: rates, sizes, durations."""

from __future__ import annotations

import math
import re

from damselfly.core.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B?)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DUR_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | int | float, what: str = "size") -> int:
    """``20M`` → 20971520. Units K/M/G/T are powers of 1024 (v1's reading); B or none is bytes.

    ``0`` means "no limit" where a rate is expected. Raises ConfigError naming ``what``.
    """
    if isinstance(text, bool):
        raise ConfigError(f"invalid {what}: {text!r}", "use a number with K/M/G, e.g. 20M")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"invalid {what}: {text!r}", "must be a finite, non-negative number")
        return int(text)
    m = _SIZE_RE.match(str(text))
    if not m or len(str(text)) > 32:
        raise ConfigError(f"invalid {what}: {text!r}", "use a number with K/M/G, e.g. 20M")
    value = float(m.group(1)) * _MULT[m.group(2).upper()]
    return int(value)


def parse_rate(text: str | int | float | None, what: str = "rate") -> int | None:
    """Bytes per second, or None for "no limit" (empty, ``0``, ``none``, ``off``)."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("", "none", "off", "unlimited", "0"):
        return None
    value = parse_size(text, what)
    return value or None


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """``3m`` → 180.0, ``1h30m`` → 5400.0, ``45`` → 45.0 seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"invalid {what}: {text!r}", "use e.g. 30s, 3m, 1h")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"invalid {what}: {text!r}", "must be a finite, non-negative number")
        return float(text)
    s = str(text).strip().lower()
    if len(s) > 32:
        raise ConfigError(f"invalid {what}: {text!r}", "use e.g. 30s, 3m, 1h")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"invalid {what}: {text!r}", "must be a finite, non-negative number")
        return value
    total = 0.0
    pos = 0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_MULT[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ConfigError(f"invalid {what}: {text!r}", "use e.g. 30s, 3m, 1h")
    return total


def format_size(n: float) -> str:
    """Human-readable bytes: 1536 → '1.5KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"
