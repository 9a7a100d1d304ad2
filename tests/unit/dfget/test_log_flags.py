"""``--log-format`` / ``--log-max-size`` / ``--log-backups`` on dfget, its background engine,
dfdaemon and supernode: bad values stop the command at start-up with one clear line, good
ones reach the engine's argv (what a background engine is started with) intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.core.errors import ConfigError
from damselfly.core.logs import LogConfig
from damselfly.dfdaemon.cli import engine_config as dfdaemon_engine_config
from damselfly.dfdaemon.cli import main as dfdaemon_main
from damselfly.dfdaemon.cli import parse_daemon_config
from damselfly.dfget.cli import main as dfget_main
from damselfly.dfget.options import FileConfig, build_parser, resolve
from damselfly.peer.config import config_from_args, engine_arg_parser
from damselfly.supernode.cli import load_config
from damselfly.supernode.cli import main as supernode_main


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-u", "http://h/f", "--log-format", "xml"], "invalid --log-format 'xml'"),
        (["-u", "http://h/f", "--log-max-size", "big"], "invalid --log-max-size"),
        (["-u", "http://h/f", "--log-backups", "-2"], "invalid --log-backups"),
        (["server", "--log-format", "yaml"], "invalid --log-format 'yaml'"),
    ],
)
def test_dfget_refuses_bad_log_flags(
    argv: list[str],
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        dfget_main([*argv, "--home", str(tmp_path / "home")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then one line saying what is wrong
    assert ": error: " in last and fragment in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "home").exists()  # nothing started


def test_dfget_flags_reach_the_engine_argv(tmp_path: Path) -> None:
    logs = ["--log-format", "json", "--log-max-size", "1M", "--log-backups", "2"]
    ns = build_parser().parse_args(
        ["-u", "http://h/f", "-o", str(tmp_path / "f"), "--home", str(tmp_path / "h"), *logs]
    )
    opts = resolve(ns, FileConfig(), str(tmp_path))
    assert opts.engine.log == LogConfig("json", 1024 * 1024, 2)
    argv = opts.engine.argv()
    assert argv[argv.index("--log-format") + 1] == "json"
    # the background engine parses that argv back to the same config
    engine = config_from_args(engine_arg_parser().parse_args(argv))
    assert engine.log == opts.engine.log and engine.home == opts.engine.home
    # without the flags: text, the default rotation, nothing added to the argv
    ns = build_parser().parse_args(["-u", "http://h/f", "-o", str(tmp_path / "f")])
    plain = resolve(ns, FileConfig(), str(tmp_path)).engine
    assert plain.log == LogConfig() and "--log-format" not in plain.argv()


def test_dfdaemon_log_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        dfdaemon_main(["--home", str(tmp_path / "h"), "--log-format", "xml"])
    assert e.value.code == 2
    assert "invalid --log-format 'xml'" in capsys.readouterr().err
    # dfget_flags may carry the engine's log flags too (the command line wins: dfdaemon.cli)
    cfg = parse_daemon_config({"dfget_flags": ["--log-format", "json", "--log-backups", "3"]})
    assert dfdaemon_engine_config(cfg, str(tmp_path / "h")).log == LogConfig("json", backups=3)
    with pytest.raises(ConfigError, match="--log-format"):
        dfdaemon_engine_config(
            parse_daemon_config({"dfget_flags": ["--log-format", "xml"]}), str(tmp_path / "h")
        )


def test_supernode_log_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home-dir", str(tmp_path / "sn")]
    cfg = load_config([*home, "--log-format", "json", "--log-max-size", "2M"])
    assert (cfg.log_format, cfg.log_max_bytes, cfg.log_backups) == ("json", 2 * 1024 * 1024, 5)
    assert load_config(home).log_format == "text"
    assert supernode_main([*home, "--log-format", "xml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("supernode: invalid --log-format 'xml'") and "use text or json" in err
    assert supernode_main([*home, "--log-backups", "x"]) == 2
    assert "invalid --log-backups" in capsys.readouterr().err
