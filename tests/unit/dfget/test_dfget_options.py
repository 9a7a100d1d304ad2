"""dfget's flags, config file and their precedence, output path rules, header parsing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.errors import ConfigError
from damselfly.dfget.options import (
    FileConfig,
    Options,
    build_parser,
    default_output_name,
    parse_file_config,
    parse_header,
    resolve,
    resolve_output,
)
from damselfly.peer.config import default_home

URL = "http://origin.example/dir/file.tar.gz?Expires=1&Signature=x"
M = 1024 * 1024


def opts(tmp_path: Path, *argv: str, fc: FileConfig | None = None) -> Options:
    ns = build_parser().parse_args(["-u", URL, *argv])
    return resolve(ns, fc or FileConfig(), str(tmp_path))


def test_defaults(tmp_path: Path) -> None:
    o = opts(tmp_path)
    assert o.output == str(tmp_path / "file.tar.gz")  # the URL's last segment, in the cwd
    assert o.nodes == ["127.0.0.1:8002"]
    assert (o.locallimit, o.totallimit, o.minrate, o.timeout) == (None, None, None, None)
    assert o.pattern == "p2p" and not o.notbs and o.headers == {}
    assert o.engine.home == default_home() and o.engine.alivetime == 300.0


def test_every_flag(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    o = opts(
        tmp_path,
        "-o",
        "out.bin",
        "-n",
        "sn1:8002=2,sn2",
        "-n",
        "sn3",
        "-s",
        "20M",
        "--totallimit",
        "1G",
        "--minrate",
        "64K",
        "-e",
        "5m",
        "-m",
        "0123456789abcdef0123456789ABCDEF",
        "-i",
        "ident",
        "-f",
        "Expires&Signature",
        "-f",
        "Other",
        "--header",
        "Authorization: Bearer x",
        "--header",
        "X-A:b",
        "-p",
        "cdn",
        "--notbs",
        "--callsystem",
        "ci",
        "--cacerts",
        str(ca),
        "--insecure",
        "-b",
        "--console",
        "--verbose",
        "--home",
        str(tmp_path / "h"),
        "--ip",
        "127.0.0.1",
        "--port",
        "15000",
        "--expiretime",
        "1m",
        "--alivetime",
        "10m",
    )
    assert o.output == str(tmp_path / "out.bin")
    assert o.nodes == ["sn1:8002=2", "sn2", "sn3"]
    assert (o.locallimit, o.totallimit, o.minrate, o.timeout) == (
        20 * M,
        1024 * M,
        64 * 1024,
        300.0,
    )
    assert o.md5 == "0123456789abcdef0123456789abcdef" and o.identifier == "ident"
    assert o.filter == ["Expires", "Signature", "Other"]
    assert o.headers == {"Authorization": "Bearer x", "X-A": "b"}
    assert (o.pattern, o.notbs, o.callsystem, o.insecure) == ("cdn", True, "ci", True)
    assert o.cacerts == [str(ca)] and o.showbar and o.console and o.verbose
    e = o.engine
    assert (e.home, e.ip, e.port, e.expiretime, e.alivetime) == (
        tmp_path / "h",
        "127.0.0.1",
        15000,
        60.0,
        600.0,
    )
    req = o.request()
    assert req["headers"] == {"Authorization": "Bearer x", "X-A": "b"}
    assert "Bearer" not in repr(o) and "Bearer" not in " ".join(e.argv())


@pytest.mark.parametrize(
    ("field", "flag", "value", "file_value", "expect"),
    [
        ("locallimit", "-s", "1M", 5, M),
        ("locallimit", None, None, 5, 5),
        ("minrate", "--minrate", "2K", 5, 2048),
        ("minrate", None, None, 7, 7),
        ("totallimit", "--totallimit", "3K", 9, 3072),
        ("totallimit", None, None, 9, 9),
        ("nodes", "-n", "a:1", ["b:2"], ["a:1"]),
        ("nodes", None, None, ["b:2"], ["b:2"]),
    ],
)
def test_the_command_line_wins_over_the_config_file(
    tmp_path: Path, field: str, flag: str | None, value: str | None, file_value: Any, expect: Any
) -> None:
    fc = FileConfig(**{field: file_value})
    argv = [flag, value] if flag and value else []
    assert getattr(opts(tmp_path, *argv, fc=fc), field) == expect


def test_home_precedence(tmp_path: Path) -> None:
    fc = FileConfig(home=str(tmp_path / "from-file"))
    assert opts(tmp_path, fc=fc).engine.home == tmp_path / "from-file"
    assert opts(tmp_path, "--home", str(tmp_path / "flag"), fc=fc).engine.home == tmp_path / "flag"


def test_config_file_keys() -> None:
    fc = parse_file_config(
        b"nodes:\n  - sn1:8002\n  - sn2\nlocalLimit: 20M\nminRate: 64K\ntotalLimit: 0\n"
        b"workHome: /srv/df\nclientQueueSize: 6\n"
    )
    assert fc == FileConfig(["sn1:8002", "sn2"], 20 * M, 64 * 1024, None, "/srv/df")
    assert parse_file_config(b"") == FileConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"nodez: [a]", "unknown key 'nodez'"),
        (b"- a\n- b", "mapping"),
        (b"nodes: [1, 2]", "nodes"),
        (b"nodes: ['a:99999']", "port"),
        (b"localLimit: fast", "localLimit"),
        (b"workHome: 3", "workHome"),
        (b"a: [b", "YAML"),
    ],
)
def test_bad_config_files(text: bytes, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_file_config(text, "dfget.yml")
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-s", "lots"], "--locallimit"),
        (["-e", "soon"], "--timeout"),
        (["-m", "abc"], "md5"),
        (["-n", "host:0"], "port"),
        (["--header", "NoColon"], "--header"),
        (["--header", "Bad Name: v"], "--header"),
        (["--port", "99999"], "--port"),
        (["--ip", "x.y"], "--ip"),
        (["--cacerts", "/no/such/ca.pem"], "--cacerts"),
        (["-o", "/no/such/dir/f"], "does not exist"),
    ],
)
def test_bad_values(tmp_path: Path, argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        opts(tmp_path, *argv)
    assert fragment in str(e.value)


def test_bad_urls(tmp_path: Path) -> None:
    for url, fragment in [
        ("ftp://x/f", "scheme"),
        ("http://user:pw@x/f", "--header"),
        ("http://x/dir/", "-o"),  # no name to give the output
    ]:
        ns = build_parser().parse_args(["-u", url])
        with pytest.raises(ConfigError) as e:
            resolve(ns, FileConfig(), str(tmp_path))
        assert fragment in str(e.value)
    with pytest.raises(ConfigError):
        resolve(build_parser().parse_args([]), FileConfig(), str(tmp_path))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/a/b/c.bin", "c.bin"),
        ("http://h/a/b%20c.bin?x=1", "b c.bin"),
        ("http://h/v2/lib/blobs/sha256:abcd", "sha256:abcd"),
    ],
)
def test_default_output_name(url: str, name: str) -> None:
    assert default_output_name(url) == name


@pytest.mark.parametrize("url", ["http://h/", "http://h", "http://h/a/..", "http://h/a%2Fb"])
def test_no_default_output_name(url: str) -> None:
    with pytest.raises(ConfigError):
        default_output_name(url)


def test_output_rules(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert resolve_output("sub/f", URL, str(tmp_path)) == str(tmp_path / "sub" / "f")
    assert resolve_output(str(tmp_path / "x"), URL, "/") == str(tmp_path / "x")
    for bad, fragment in [
        ("sub", "is a directory"),
        ("sub/", "is a directory"),
        ("nodir/f", "does not exist"),
    ]:
        with pytest.raises(ConfigError) as e:
            resolve_output(bad, URL, str(tmp_path))
        assert fragment in str(e.value)
    os.symlink("/dev/null", tmp_path / "dev")
    with pytest.raises(ConfigError) as e:
        resolve_output("dev", URL, str(tmp_path))
    assert "not a regular file" in str(e.value)


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("Authorization: Bearer abc", ("Authorization", "Bearer abc")),
        ("X-A:b:c", ("X-A", "b:c")),
        ("X-Empty:", ("X-Empty", "")),
    ],
)
def test_parse_header(text: str, pair: tuple[str, str]) -> None:
    assert parse_header(text) == pair


def test_header_errors_do_not_echo_the_value() -> None:
    with pytest.raises(ConfigError) as e:
        parse_header("Authorization: tok-secret\r\nX: y")
    assert "tok-secret" not in str(e.value)
