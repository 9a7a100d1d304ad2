"""core/logs.py: the JSON formatter (one object per line, fixed keys first and not
overridable, structured fields), the log flags parsed into a LogConfig, and size-based rotation
of a real file through ``setup_logging``."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.core.errors import ConfigError
from damselfly.core.logs import (
    LOG_BACKUPS,
    LOG_MAX_BYTES,
    JsonFormatter,
    LogConfig,
    add_log_flags,
    fields,
    formatter,
    log_config,
    setup_logging,
    validate_log_format,
)

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str, *args: object, extra: dict[str, object] | None = None) -> logging.LogRecord:
    """A record made the way Logger.info makes it (extra becomes attributes)."""
    logger = logging.getLogger("damselfly.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra)


def test_json_line_has_the_fixed_keys_and_the_fields() -> None:
    r = record(
        "download %s: %d bytes",
        "success",
        42,
        extra=fields(task_id="ab" * 32, bytes_from={"origin": 0, "peers": 42}, where=Path("/x")),
    )
    line = JsonFormatter().format(r)
    assert "\n" not in line
    obj = json.loads(line)
    assert list(obj)[:4] == ["time", "level", "logger", "message"]
    assert TIME_RE.match(obj["time"]), obj["time"]
    assert obj["level"] == "info" and obj["logger"] == "damselfly.test"
    assert obj["message"] == "download success: 42 bytes"
    assert obj["task_id"] == "ab" * 32 and obj["bytes_from"] == {"origin": 0, "peers": 42}
    assert obj["where"] == "/x"  # a non-JSON value is written as text, the line is kept


def test_fields_cannot_override_the_fixed_keys() -> None:
    r = record("real", extra=fields(message="forged", level="debug", time="t", logger="l"))
    obj = json.loads(JsonFormatter().format(r))
    assert (obj["message"], obj["level"], obj["logger"]) == ("real", "info", "damselfly.test")
    assert TIME_RE.match(obj["time"])


def test_multiline_message_and_exception_stay_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        r = record("two\nlines")
        r.exc_info = sys.exc_info()
    line = JsonFormatter().format(r)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "two\nlines" and "ValueError: boom" in obj["exc"]


def test_text_is_the_default_and_shows_no_fields() -> None:
    r = record("hello %s", "world", extra=fields(secretish="not shown"))
    text = formatter("text").format(r)
    assert text.endswith(" INFO damselfly.test: hello world")
    assert "not shown" not in text
    assert isinstance(formatter("json"), JsonFormatter)


@pytest.mark.parametrize("bad", ["", "JSON", "xml", "text "])
def test_bad_format_is_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_log_format(bad)
    assert "--log-format" in str(e.value) and "use text or json" in str(e.value)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_log_flags(ap)
    return ap.parse_args(argv)


def test_flags_defaults_and_values() -> None:
    assert log_config(parse([])) == LogConfig("text", LOG_MAX_BYTES, LOG_BACKUPS)
    assert LOG_MAX_BYTES == 50 * 1024 * 1024 and LOG_BACKUPS == 5
    got = log_config(parse(["--log-format", "json", "--log-max-size", "10M", "--log-backups", "2"]))
    assert got == LogConfig("json", 10 * 1024 * 1024, 2)
    # flags win over a base (e.g. a config file); unset flags keep the base's values
    base = LogConfig("json", 123, 7)
    assert log_config(parse(["--log-backups", "1"]), base) == LogConfig("json", 123, 1)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--log-format", "yaml"], "--log-format"),
        (["--log-max-size", "lots"], "--log-max-size"),
        (["--log-max-size", "-1"], "--log-max-size"),
        (["--log-backups", "many"], "--log-backups"),
        (["--log-backups", "-1"], "--log-backups"),
        (["--log-backups", "100000"], "--log-backups"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        log_config(parse(argv))
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "cfg", [LogConfig(), LogConfig("json"), LogConfig("json", 1024, 0), LogConfig("text", 0, 9)]
)
def test_argv_round_trips(cfg: LogConfig) -> None:
    """What a background engine is started with gives it the same config."""
    assert log_config(parse(cfg.argv())) == cfg
    assert (cfg.argv() == []) == (cfg == LogConfig())  # defaults add nothing to an argv


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield root
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_setup_logging_rotates_by_size(tmp_path: Path, root_logger: logging.Logger) -> None:
    log_file = tmp_path / "logs" / "x.log"
    setup_logging(False, False, log_file, LogConfig("json", 4096, 2))
    log = logging.getLogger("damselfly.rotation")
    for i in range(400):
        log.info("line %d %s", i, "x" * 40, extra=fields(n=i))
    for h in root_logger.handlers:
        h.flush()
    names = sorted(p.name for p in log_file.parent.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"]  # two backups kept, older ones dropped
    seen = []
    for p in log_file.parent.iterdir():
        assert p.stat().st_size <= 4096
        seen += [json.loads(ln)["n"] for ln in p.read_text().splitlines()]
    assert 399 in seen and 0 not in seen  # the newest kept, the oldest rotated away
    assert len(seen) == len(set(seen))


def test_setup_logging_text_console(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(True, True, None, "text")
    assert root_logger.level == logging.DEBUG
    logging.getLogger("damselfly.console").debug("plain %s", "line")
    err = capsys.readouterr().err
    assert "DEBUG damselfly.console: plain line" in err and not err.startswith("{")
    with pytest.raises(ConfigError):
        setup_logging(False, True, None, "xml")
