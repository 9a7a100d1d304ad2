"""Download requests over the control channel, the timeout rule, and the engine's config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.errors import BadRequest, ConfigError
from damselfly.peer.config import (
    DEFAULT_ALIVETIME,
    EngineConfig,
    config_from_args,
    engine_arg_parser,
)
from damselfly.peer.request import DownloadRequest, compute_timeout

URL = "http://origin.example:8080/f.bin?Signature=abc&x=1"


def req(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"url": URL, "output": "/tmp/out/f.bin"}
    body.update(kw)
    return body


def test_a_full_request_round_trips() -> None:
    body = req(
        headers={"Authorization": "Bearer t"},
        md5="A" * 32,
        identifier="id",
        filter="Signature&Expires",
        pattern="cdn",
        nodes=["sn1:8002=2", "sn2"],
        locallimit=1024,
        totallimit=2048,
        minrate=512,
        timeout=30,
        notbs=True,
        callsystem="ci",
        cacerts=["/etc/ca.pem"],
        insecure=True,
    )
    r = DownloadRequest.from_json(body)
    assert r.md5 == "a" * 32 and r.filter == ["Signature", "Expires"]
    assert [n.addr for n in r.node_list()] == ["sn1:8002", "sn2:8002"]
    assert r.timeout == 30.0 and r.locallimit == 1024
    assert DownloadRequest.from_json(r.to_json()) == r
    assert "Bearer" not in repr(r)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"url": "ftp://x/y"}, "scheme"),
        ({"url": "http://u:p@x/y"}, "user:password"),
        ({"output": "relative/f"}, "absolute"),
        ({"output": "/tmp/dir/"}, "directory"),
        ({"pattern": "torrent"}, "pattern"),
        ({"md5": "xyz"}, "md5"),
        ({"headers": {"X": "a\r\nInjected: 1"}}, "control characters"),
        ({"headers": {f"h{i}": "v" for i in range(65)}}, "headers"),
        ({"nodes": ["host:99999"]}, "port"),
        ({"nodes": "sn1"}, "nodes"),
        ({"locallimit": -5}, "locallimit"),
        ({"locallimit": True}, "locallimit"),
        ({"timeout": "soon"}, "timeout"),
        ({"notbs": "yes"}, "notbs"),
        ({"filter": [""]}, "filter"),
        ({"cacerts": [1]}, "cacerts"),
        ({"identifier": "x" * 2000}, "identifier"),
    ],
)
def test_bad_requests_are_refused(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest) as e:
        DownloadRequest.from_json(req(**change))
    assert fragment in str(e.value)


def test_header_values_never_appear_in_errors() -> None:
    with pytest.raises(BadRequest) as e:
        DownloadRequest.from_json(req(headers={"Authorization": "secret-tok\n"}))
    assert "secret-tok" not in str(e.value)


@pytest.mark.parametrize(
    ("timeout", "minrate", "length", "expect"),
    [
        (None, None, 1000, None),  # no limit unless asked
        (30.0, None, 1000, 30.0),
        (30.0, 10, 1000, 30.0),  # --timeout wins
        (None, 100, 1000, 20.0),  # length/minrate + 10 s
        (None, 100, None, None),  # length unknown yet
        (None, 100, 0, 10.0),
    ],
)
def test_timeout_rule(
    timeout: float | None, minrate: int | None, length: int | None, expect: float | None
) -> None:
    assert compute_timeout(timeout, minrate, length) == expect


def parse(*argv: str) -> EngineConfig:
    return config_from_args(engine_arg_parser().parse_args(list(argv)))


def test_engine_defaults() -> None:
    cfg = parse("--home", "/tmp/h")
    assert cfg == EngineConfig(Path("/tmp/h"))
    assert cfg.alivetime == DEFAULT_ALIVETIME and cfg.totallimit is None  # no limit by default
    assert cfg.socket_path == Path("/tmp/h/engine.sock") and cfg.data_dir == Path("/tmp/h/data")


def test_engine_flags_round_trip_through_argv() -> None:
    cfg = parse(
        "--home",
        "/tmp/h",
        "--port",
        "15001",
        "--ip",
        "10.1.2.3",
        "--alivetime",
        "1m30s",
        "--expiretime",
        "90",
        "--totallimit",
        "20M",
        "--verbose",
        "--stall-timeout",
        "2s",
    )
    assert (cfg.port, cfg.ip, cfg.alivetime, cfg.expiretime) == (15001, "10.1.2.3", 90.0, 90.0)
    assert cfg.totallimit == 20 * 1024 * 1024 and cfg.stall_timeout == 2.0
    assert parse(*cfg.argv()) == cfg
    assert "--home" in cfg.argv() and "/tmp/h" in cfg.argv()


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "x"],
        ["--ip", "not-an-ip"],
        ["--alivetime", "forever"],
        ["--totallimit", "fast"],
        ["--stall-timeout", "0"],
    ],
)
def test_bad_engine_flags(argv: list[str]) -> None:
    ns = engine_arg_parser().parse_args(["--home", "/tmp/h", *argv])
    with pytest.raises(ConfigError):
        config_from_args(ns)


def test_fallbacks_apply_only_without_the_flag() -> None:
    ns = argparse.Namespace(
        home=None,
        port=None,
        ip=None,
        alivetime=None,
        expiretime=None,
        totallimit=None,
        stall_timeout=None,
        verbose=False,
    )
    cfg = config_from_args(ns, home="/srv/h", totallimit=5)
    assert cfg.home == Path("/srv/h") and cfg.totallimit == 5
    ns.home, ns.totallimit = "/other", "1K"
    cfg = config_from_args(ns, home="/srv/h", totallimit=5)
    assert cfg.home == Path("/other") and cfg.totallimit == 1024
