"""Supernode configuration: defaults, then the YAML file (v1 keys under ``base:``), then flags.

Parsed and validated once at start-up; a bad value or an unknown key fails with a message naming
it. v1 keys that Damselfly does not need are accepted and ignored (with a log line), so that an
existing v1 ``supernode.yml`` still starts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from damselfly.core.cluster import ClusterSecurity
from damselfly.core.errors import ConfigError
from damselfly.core.logs import LOG_BACKUPS, LOG_MAX_BYTES, make_log_config
from damselfly.core.pieces import PIECE_RULES
from damselfly.core.units import parse_duration, parse_rate, parse_size

CDN_PATTERNS = ("local", "source")


def default_home() -> Path:
    return (
        Path(os.environ.get("HOME") or os.path.expanduser("~")) / ".small-dragonfly" / "supernode"
    )


def guess_advertise_ip() -> str:
    """The host's address as its name resolves, else loopback (set --advertise-ip on real hosts)."""
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return ip or "127.0.0.1"


@dataclass
class SupernodeConfig:
    port: int = 8002
    download_port: int = 8001
    listen: str = "0.0.0.0"
    home_dir: Path = field(default_factory=default_home)
    advertise_ip: str = ""
    max_bandwidth: int | None = 200 * 1024 * 1024
    system_bandwidth: int | None = 20 * 1024 * 1024
    up_limit: int = 5
    down_limit: int = 4
    task_expire_time: float = 180.0
    peer_gc_delay: float = 180.0
    cdn_pattern: str = "local"
    #: how files are cut into pieces (core/pieces.py): "swarm" (~100 pieces of ≥ 1 MiB, at most
    #: v1's size; the default) or "v1" (Dragonfly v1's sizes: 4 MiB up to 200 MiB)
    piece_sizes: str = "swarm"
    # disk GC: below young_gc free bytes, tasks idle for a while are removed from the cache (least
    # recently used first); below full_gc, any task not in use (v1: youngGCThreshold 100G,
    # fullGCThreshold 5G; Damselfly's young default is 20G, sized for smaller cache disks)
    young_gc_threshold: int = 20 * 1024**3
    full_gc_threshold: int = 5 * 1024**3
    verbose: bool = False
    log_format: str = "text"  # text | json (core/logs.py)
    log_max_bytes: int = LOG_MAX_BYTES  # supernode.log rotates at this size (0: never)
    log_backups: int = LOG_BACKUPS
    #: lifetime of a grant to a private task (renewed by schedule answers at half-life); hosts'
    #: clocks may differ by up to half of it
    grant_ttl: float = 600.0
    # cluster security (core/cluster.py): file paths, never the secrets themselves
    cluster_token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    security: ClusterSecurity = field(default_factory=ClusterSecurity)  # set by validate()

    @property
    def cdn_rate(self) -> int | None:
        """Bytes/s for all origin fetches together: max-bandwidth − system-bandwidth."""
        if self.max_bandwidth is None:
            return None
        rate = self.max_bandwidth - (self.system_bandwidth or 0)
        if rate <= 0:
            raise ConfigError(
                "--max-bandwidth must be larger than --system-bandwidth",
                f"got {self.max_bandwidth} and {self.system_bandwidth} bytes/s",
            )
        return rate

    def validate(self) -> SupernodeConfig:
        for name in ("port", "download_port"):
            v = getattr(self, name)
            if not 0 <= v < 65536:
                raise ConfigError(f"invalid --{name.replace('_', '-')} {v}", "use 1..65535")
        if self.port and self.port == self.download_port:
            raise ConfigError("--port and --download-port must differ")
        if self.up_limit < 1 or self.down_limit < 1:
            raise ConfigError("--up-limit and --down-limit must be at least 1")
        if self.cdn_pattern not in CDN_PATTERNS:
            raise ConfigError(f"invalid --cdn-pattern {self.cdn_pattern!r}", "use local or source")
        if self.piece_sizes not in PIECE_RULES:
            raise ConfigError(f"invalid --piece-sizes {self.piece_sizes!r}", "use swarm or v1")
        make_log_config(self.log_format, self.log_max_bytes, self.log_backups)
        _ = self.cdn_rate
        if self.full_gc_threshold > self.young_gc_threshold:
            raise ConfigError(
                "--full-gc-threshold must not be larger than --young-gc-threshold",
                f"got {self.full_gc_threshold} and {self.young_gc_threshold} bytes",
            )
        if not 1 <= self.grant_ttl <= 86400:
            raise ConfigError(f"invalid --grant-ttl {self.grant_ttl:g}s", "use 1s..24h")
        self.security = ClusterSecurity.from_paths(
            self.cluster_token_file, self.tls_cert, self.tls_key, None
        )
        if not self.advertise_ip:
            self.advertise_ip = guess_advertise_ip()
        return self


# v1 YAML key (under base:) → our field and its parser
_V1_KEYS: dict[str, tuple[str, Any]] = {
    "listenPort": ("port", int),
    "downloadPort": ("download_port", int),
    "homeDir": ("home_dir", Path),
    "advertiseIP": ("advertise_ip", str),
    "maxBandwidth": ("max_bandwidth", lambda v: parse_rate(v, "maxBandwidth")),
    "systemReservedBandwidth": (
        "system_bandwidth",
        lambda v: parse_rate(v, "systemReservedBandwidth"),
    ),
    "peerUpLimit": ("up_limit", int),
    "peerDownLimit": ("down_limit", int),
    "taskExpireTime": ("task_expire_time", lambda v: parse_duration(v, "taskExpireTime")),
    "peerGCDelay": ("peer_gc_delay", lambda v: parse_duration(v, "peerGCDelay")),
    "cdnPattern": ("cdn_pattern", str),
    "pieceSizes": ("piece_sizes", str),
    "debug": ("verbose", bool),
    "youngGCThreshold": ("young_gc_threshold", lambda v: parse_size(v, "youngGCThreshold")),
    "fullGCThreshold": ("full_gc_threshold", lambda v: parse_size(v, "fullGCThreshold")),
    "grantTTL": ("grant_ttl", lambda v: parse_duration(v, "grantTTL")),
    "clusterTokenFile": ("cluster_token_file", str),
    "tlsCert": ("tls_cert", str),
    "tlsKey": ("tls_key", str),
}
# v1 keys accepted for compatibility but not used by Damselfly.
_V1_IGNORED = {
    "schedulerCorePoolSize",
    "pieceSizeLimit",
    "eliminationLimit",
    "failureCountLimit",
    "linkLimit",
    "cdnPath",
    "downloadPath",
    "gcInitialDelay",
    "gcMetaInterval",
    "gcDiskInterval",
    "IntervalThreshold",
    "failAccessInterval",
}


def load_yaml(path: Path, cfg: SupernodeConfig) -> list[str]:
    """Apply a v1-style YAML file to ``cfg``; returns the names of ignored v1 keys."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping with a 'base' section")
    ignored: list[str] = []
    for top in data:
        if top not in ("base", "plugins", "storages"):
            raise ConfigError(f"unknown key {top!r} in {path}", "expected 'base'")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"'base' in {path} must be a mapping")
    for key, value in base.items():
        if key in _V1_IGNORED:
            ignored.append(key)
            continue
        if key not in _V1_KEYS:
            raise ConfigError(f"unknown key base.{key} in {path}")
        name, parse = _V1_KEYS[key]
        try:
            setattr(cfg, name, parse(value))
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"invalid value for base.{key} in {path}: {value!r}") from e
    return ignored


def field_names() -> list[str]:
    return [f.name for f in fields(SupernodeConfig)]
