"""dfdaemon's YAML config (v1 keys) and the engine it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from damselfly.core.errors import ConfigError
from damselfly.dfdaemon.cli import (
    DaemonConfig,
    engine_config,
    load_daemon_config,
    parse_daemon_config,
)

SEED = """
dfget_flags: ["--verbose", "-f", "Expires&OSSAccessKeyId&Signature"]
registry_mirror:
  remote: https://your.private.registry
proxies:
  - regx: blobs/sha256.*
    use_https: true
verbose: true
node:
  - 10.233.60.241:8002
"""


def test_the_seed_walkthrough_config_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "dfdaemon.yml"
    f.write_text(SEED)
    cfg = load_daemon_config(str(f))
    assert cfg.nodes == ["10.233.60.241:8002"] and cfg.verbose and cfg.port == 65001
    assert cfg.registry_mirror == {"remote": "https://your.private.registry"}
    assert cfg.proxies == [{"regx": "blobs/sha256.*", "use_https": True}]


def test_all_v1_keys() -> None:
    cfg = parse_daemon_config(
        yaml.safe_load(
            "port: 65002\nsupernodes: [a:8002, b]\nratelimit: 20M\nlocalrepo: /srv/repo\n"
            "hijack_https: {cert: ca.crt, key: ca.key}\ndfget_flags: ['--port', '15001']\n"
        )
    )
    assert (cfg.port, cfg.nodes, cfg.ratelimit, cfg.localrepo) == (
        65002,
        ["a:8002", "b"],
        20 * 1024 * 1024,
        "/srv/repo",
    )
    assert parse_daemon_config(None) == DaemonConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("registry-mirror: {}", "unknown key 'registry-mirror'"),
        ("port: 700000", "port"),
        ("node: [a:1]\nsupernodes: [b:2]", "both"),
        ("node: [1]", "node"),
        ("ratelimit: quick", "ratelimit"),
        ("dfget_flags: --verbose", "dfget_flags"),
        ("proxies: {regx: a}", "proxies"),
        ("verbose: yes please", "verbose"),
        ("- a", "mapping"),
    ],
)
def test_bad_configs(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_daemon_config(yaml.safe_load(text), "dfdaemon.yml")
    assert fragment in str(e.value)


def test_engine_from_dfget_flags(tmp_path: Path) -> None:
    cfg = DaemonConfig(dfget_flags=["--port", "15001", "--totallimit", "1M", "-f", "a&b"])
    e = engine_config(cfg, str(tmp_path))
    assert (e.port, e.totallimit, e.home, e.alivetime) == (15001, 1024 * 1024, tmp_path, 0.0)
    assert e.foreground


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--bogus"], "dfget_flags"),
        (["-s", "fast"], "dfget_flags"),
        (["--port", "x"], "--port"),
        (["--url", "http://h/f"], "--url"),
    ],
)
def test_bad_dfget_flags(flags: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        engine_config(DaemonConfig(dfget_flags=flags), None)
    assert fragment in str(e.value)
