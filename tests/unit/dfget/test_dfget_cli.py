"""dfget's command line as a user meets it, without an engine: usage errors, version."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly import __version__
from damselfly.dfget.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "missing --url"),
        (["-u", "ftp://h/f"], "scheme"),
        (["-u", "http://h/f", "-p", "torrent"], "invalid choice"),
        (["-u", "http://h/f", "-s", "much"], "--locallimit"),
        (["-u", "http://h/f", "--config", "/no/such/dfget.yml"], "cannot read config"),
        (["-u", "http://h/f", "--header", "Authorization tok-xyz"], "--header"),
        (["server", "--port", "-3"], "--port"),
    ],
)
def test_usage_errors(
    argv: list[str],
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and "tok-xyz" not in err
    assert list(tmp_path.iterdir()) == []


def test_config_file_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "dfget.yml"
    cfg.write_text("bogus: 1\n")
    with pytest.raises(SystemExit):
        main(["-u", "http://h/f", "-o", str(tmp_path / "f"), "--config", str(cfg)])
    assert "unknown key 'bogus'" in capsys.readouterr().err
