"""dfdaemon's YAML and flags: the seed's two configs work as written; overrides; errors name
the key; ``gen-ca`` writes a CA whose key is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from damselfly.core.errors import ConfigError
from damselfly.dfdaemon.cli import (
    download_defaults,
    engine_config,
    load_daemon_config,
    main,
    parse_daemon_config,
    proxy_settings,
)

SEED_DOCKER_IO = """
dfget_flags: ["--verbose", "-f", "Expires&OSSAccessKeyId&Signature"]
proxies:
  - regx: blobs/sha256.*
    use_https: true
node:
  - 10.233.60.241:8002
"""

SEED_PRIVATE = """
registry_mirror:
  remote: https://your.private.registry
dfget_flags: ["--verbose", "-f", "Expires&OSSAccessKeyId&Signature"]
proxies:
  - regx: blobs/sha256.*
    use_https: true
verbose: true
node:
  - 10.233.60.241:8002
"""


def test_seed_docker_io_config(tmp_path: Path) -> None:
    cfg = parse_daemon_config(yaml.safe_load(SEED_DOCKER_IO))
    assert cfg.port == 65001 and cfg.nodes == ["10.233.60.241:8002"]
    assert cfg.rules.mirror.remote == "https://index.docker.io"
    d = download_defaults(cfg)
    assert d.filter == ("Expires", "OSSAccessKeyId", "Signature")
    assert d.nodes == ("10.233.60.241:8002",) and d.locallimit is None
    route = cfg.rules.route("GET", "https://index.docker.io/v2/library/a/blobs/sha256:" + "0" * 64)
    assert route.swarm
    e = engine_config(cfg, str(tmp_path / "home"))
    assert e.home == tmp_path / "home" and e.alivetime == 0


def test_seed_private_registry_config() -> None:
    cfg = parse_daemon_config(yaml.safe_load(SEED_PRIVATE))
    assert cfg.verbose and cfg.rules.mirror.remote == "https://your.private.registry"
    s = proxy_settings(cfg)
    assert s.port == 65001 and s.rules is cfg.rules


def test_ratelimit_and_flags_become_download_options() -> None:
    cfg = parse_daemon_config(
        {"ratelimit": "20M", "dfget_flags": ["--notbs", "-p", "cdn", "--header", "X-A: b"]}
    )
    d = download_defaults(cfg)
    assert d.locallimit == 20 * 1024 * 1024 and d.notbs and d.pattern == "cdn"
    assert d.headers == (("X-A", "b"),)
    assert "X-A" not in repr(d)


@pytest.mark.parametrize(
    ("obj", "named"),
    [
        ({"prot": 1}, "'prot'"),
        ({"port": 70000}, "port"),
        ({"ratelimit": "fast"}, "ratelimit"),
        ({"node": [1]}, "'node'"),
        ({"node": ["a:1"], "supernodes": ["b:1"]}, "'supernodes'"),
        ({"verbose": "yes"}, "'verbose'"),
        ({"dfget_flags": "-f x"}, "'dfget_flags'"),
        ({"proxies": {"regx": "x"}}, "'proxies'"),
        ({"proxies": [{"regx": "["}]}, "proxies[0].regx"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(obj, named) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        parse_daemon_config(obj, "dfdaemon.yml")
    assert named in str(e.value)


def test_bad_dfget_flags_are_rejected() -> None:
    cfg = parse_daemon_config({"dfget_flags": ["--no-such-flag"]})
    with pytest.raises(ConfigError, match="dfget_flags"):
        download_defaults(cfg)
    cfg = parse_daemon_config({"dfget_flags": ["--url", "http://x/y"]})
    with pytest.raises(ConfigError, match="--url"):
        download_defaults(cfg)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_daemon_config(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("port: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_daemon_config(str(bad))


def test_cli_rejects_a_bad_config_with_the_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "d.yml"
    f.write_text("registry_mirror: {remote: 'ftp://x'}\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(f), "--home", str(tmp_path / "h")])
    assert e.value.code == 2
    assert "registry_mirror.remote" in capsys.readouterr().err


def test_gen_ca_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cert, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    assert main(["gen-ca", "--cert", str(cert), "--key", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()
    with pytest.raises(SystemExit):
        main(["gen-ca", "--cert", str(cert), "--key", str(key)])
    assert "exists" in capsys.readouterr().err
