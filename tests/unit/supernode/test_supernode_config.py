"""The supernode's configuration: v1 flags and defaults, v1 YAML under ``base:``, flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.core.errors import ConfigError
from damselfly.core.pieces import MiB
from damselfly.supernode.cli import load_config


def test_v1_defaults() -> None:
    cfg = load_config(["--advertise-ip", "10.0.0.1"])
    assert (cfg.port, cfg.download_port) == (8002, 8001)
    assert (cfg.up_limit, cfg.down_limit) == (5, 4)
    assert cfg.cdn_rate == 180 * MiB  # max-bandwidth 200M − system-bandwidth 20M
    assert cfg.cdn_pattern == "local"
    assert cfg.task_expire_time == 180.0 and cfg.peer_gc_delay == 180.0
    assert cfg.home_dir.parts[-2:] == (".small-dragonfly", "supernode")


def test_yaml_base_keys_then_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "supernode.yml"
    f.write_text(
        "base:\n"
        "  listenPort: 9002\n"
        "  downloadPort: 9001\n"
        "  homeDir: /srv/df\n"
        "  advertiseIP: 10.1.2.3\n"
        "  maxBandwidth: 1G\n"
        "  systemReservedBandwidth: 24M\n"
        "  peerUpLimit: 7\n"
        "  peerDownLimit: 3\n"
        "  taskExpireTime: 5m\n"
        "  peerGCDelay: 90s\n"
        "  cdnPattern: source\n"
        "  youngGCThreshold: 50G\n"
        "  fullGCThreshold: 2G\n"
        "  schedulerCorePoolSize: 10\n"  # a v1 key Damselfly ignores
    )
    cfg = load_config(["--config", str(f), "--port", "9102", "--up-limit", "9"])
    assert cfg.port == 9102 and cfg.up_limit == 9  # the command line wins
    assert cfg.download_port == 9001 and cfg.down_limit == 3
    assert cfg.home_dir == Path("/srv/df") and cfg.advertise_ip == "10.1.2.3"
    assert cfg.cdn_rate == 1024 * MiB - 24 * MiB
    assert cfg.task_expire_time == 300.0 and cfg.peer_gc_delay == 90.0
    assert cfg.cdn_pattern == "source"
    assert cfg.young_gc_threshold == 50 * 1024 * MiB and cfg.full_gc_threshold == 2 * 1024 * MiB


@pytest.mark.parametrize(
    ("yaml_text", "flags", "names"),
    [
        ("base:\n  listenport: 1\n", [], "base.listenport"),
        ("base:\n  peerUpLimit: many\n", [], "peerUpLimit"),
        ("supernode:\n  port: 1\n", [], "'supernode'"),
        ("base: [1, 2]\n", [], "'base'"),
        ("base: {maxBandwidth: 10M, systemReservedBandwidth: 20M}\n", [], "--max-bandwidth"),
        ("", ["--young-gc-threshold", "1G", "--full-gc-threshold", "2G"], "--full-gc-threshold"),
        ("", ["--max-bandwidth", "fast"], "--max-bandwidth"),
        ("", ["--port", "8001"], "--port"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, yaml_text: str, flags: list[str], names: str
) -> None:
    f = tmp_path / "supernode.yml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(f), "--advertise-ip", "10.0.0.1", *flags])
    assert names in str(e.value)
