"""Cluster security settings (core/cluster.py): token files, token comparison, TLS files."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.core.cluster import ClusterSecurity, read_token_file, request_token, token_ok
from damselfly.core.errors import ConfigError

TOKEN = "ctok-51d0f3e9a7b24c6e8f0a1b2c3d4e5f60"


@pytest.mark.parametrize(
    "text",
    ["", "abc", "a" * 20 + " " + "b" * 20, "a" * 5000, "tök" * 10, "a" * 20 + "\x00" + "b"],
)
def test_bad_token_files_are_refused_without_echoing_them(tmp_path: Path, text: str) -> None:
    f = tmp_path / "t"
    f.write_bytes(text.encode())
    with pytest.raises(ConfigError) as ei:
        read_token_file(str(f))
    assert str(f) in str(ei.value)
    if text:
        assert text not in str(ei.value)


def test_a_token_file_is_one_stripped_line(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text(f"  {TOKEN}\n")
    assert read_token_file(str(f)) == TOKEN
    with pytest.raises(ConfigError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def test_token_comparison() -> None:
    assert token_ok("", None) and token_ok("", "anything")  # no token configured
    assert token_ok(TOKEN, TOKEN)
    assert not token_ok(TOKEN, None)
    assert not token_ok(TOKEN, TOKEN[:-1])
    assert not token_ok(TOKEN, TOKEN + "x")
    assert not token_ok(TOKEN, "\udcff" * 3)  # undecodable header bytes: no exception


def test_the_token_is_read_from_either_header() -> None:
    assert request_token({"X-Damselfly-Token": "a"}) == "a"
    assert request_token({"Authorization": "Bearer  b "}) == "b"
    assert request_token({"Authorization": "Basic b"}) is None
    assert request_token({}) is None


def test_tls_files_must_exist_and_come_in_pairs(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        ClusterSecurity.from_paths(None, str(cert), None, None)
    with pytest.raises(ConfigError, match="does not exist"):
        ClusterSecurity.from_paths(str(tmp_path / "nope"), None, None, None)
    sec = ClusterSecurity.from_paths(None, str(cert), str(cert), str(cert))
    assert sec.argv() == ["--tls-cert", str(cert), "--tls-key", str(cert), "--tls-ca", str(cert)]
    with pytest.raises(ConfigError, match="cannot load --tls-cert"):
        sec.server_ssl()  # not PEM
    with pytest.raises(ConfigError, match="cannot load --tls-ca"):
        sec.client_ssl()
    off = ClusterSecurity()
    assert off.server_ssl() is None and off.client_ssl() is None and off.token() == ""


def test_every_component_takes_the_paths_from_flags_and_config_files(tmp_path: Path) -> None:
    from damselfly.dfdaemon.cli import engine_config, parse_daemon_config
    from damselfly.dfget.options import build_parser, parse_file_config
    from damselfly.dfget.options import engine_config as dfget_engine_config
    from damselfly.supernode.cli import load_config

    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    other = tmp_path / "other"
    other.write_text(TOKEN)
    # dfdaemon.yml
    dcfg = parse_daemon_config({"cluster_token_file": str(tok), "tls_ca": str(tok)})
    ecfg = engine_config(dcfg, str(tmp_path / "home"))
    assert ecfg.security.token_file == str(tok) and ecfg.security.tls_ca == str(tok)
    argv = ecfg.argv()
    assert argv[argv.index("--cluster-token-file") + 1] == str(tok)
    assert TOKEN not in " ".join(ecfg.argv())
    # dfget.yml, and the flag winning over it
    fc = parse_file_config(f"clusterTokenFile: {tok}\n")
    ns = build_parser().parse_args(["--url", "http://o/f"])
    assert dfget_engine_config(ns, fc).security.token_file == str(tok)
    ns = build_parser().parse_args(["--url", "http://o/f", "--cluster-token-file", str(other)])
    assert dfget_engine_config(ns, fc).security.token_file == str(other)
    # supernode: YAML base key, then the flag
    yml = tmp_path / "sn.yml"
    yml.write_text(f"base:\n  clusterTokenFile: {tok}\n")
    home = ["--home-dir", str(tmp_path / "sn")]
    assert load_config(["--config", str(yml), *home]).security.token_file == str(tok)
    cfg = load_config(["--config", str(yml), *home, "--cluster-token-file", str(other)])
    assert cfg.security.token_file == str(other)
    with pytest.raises(ConfigError, match="go together"):
        load_config([*home, "--tls-cert", str(tok)])
