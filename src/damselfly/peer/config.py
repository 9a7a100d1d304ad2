"""The peer engine's configuration: one immutable value, parsed and validated once at start-up.

``python -m damselfly.peer.engine --home DIR [--port N] [--ip IP] [--alivetime 5m]
[--expiretime 3m] [--totallimit RATE] [--verbose] [--foreground]``. The argv names the home (so
operators can tell engines apart) and never carries a secret: headers reach the engine only over
its control socket.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from damselfly.core.cluster import ClusterSecurity
from damselfly.core.errors import ConfigError
from damselfly.core.logs import LogConfig, add_log_flags, log_config
from damselfly.core.units import parse_duration, parse_rate

DEFAULT_ALIVETIME = 300.0  # v1: the uploader exits after 5 minutes idle
DEFAULT_EXPIRETIME = 180.0  # v1: task data is kept 3 minutes after its last use
#: a source that sends no byte for this long is abandoned and the piece fetched elsewhere
DEFAULT_STALL_TIMEOUT = 5.0
#: how often the engine tells its supernodes it is alive
DEFAULT_HEARTBEAT = 10.0


def default_home() -> Path:
    """``~/.small-dragonfly``, from $HOME (v1's default work home)."""
    return Path(os.path.expanduser("~")) / ".small-dragonfly"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    home: Path
    port: int = 0  # 0: a free port
    ip: str = ""  # "": the local address that reaches the supernode
    alivetime: float = DEFAULT_ALIVETIME  # 0: never exit when idle
    expiretime: float = DEFAULT_EXPIRETIME
    totallimit: int | None = None  # bytes/s for every download on the host; None: no limit
    verbose: bool = False
    foreground: bool = False
    ready_fd: int = -1  # the launcher's pipe: one "ready" line, then closed
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT
    log: LogConfig = field(default_factory=LogConfig)  # engine.log format, rotation
    #: cluster token file and TLS files (core/cluster.py); paths only, never a secret
    security: ClusterSecurity = field(default_factory=ClusterSecurity)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def socket_path(self) -> Path:
        return self.home / "engine.sock"

    @property
    def lock_path(self) -> Path:
        return self.home / "engine.lock"

    def argv(self) -> list[str]:
        """The engine's command-line flags for this config (no secret can be in here)."""
        out = ["--home", str(self.home)]
        if self.port:
            out += ["--port", str(self.port)]
        if self.ip:
            out += ["--ip", self.ip]
        out += ["--alivetime", f"{self.alivetime:g}s", "--expiretime", f"{self.expiretime:g}s"]
        if self.totallimit:
            out += ["--totallimit", str(self.totallimit)]
        if self.verbose:
            out.append("--verbose")
        if self.stall_timeout != DEFAULT_STALL_TIMEOUT:
            out += ["--stall-timeout", f"{self.stall_timeout:g}s"]
        return out + self.security.argv() + self.log.argv()


def validate_port(value: int | str, what: str = "port") -> int:
    try:
        port = int(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"invalid {what} {value!r}", "give a number 0..65535") from e
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid {what} {port}", "give a number 0..65535")
    return port


def validate_ip(value: str) -> str:
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as e:
        raise ConfigError(f"invalid --ip {value!r}", "give an IPv4 or IPv6 address") from e


def engine_arg_parser(prog: str = "python -m damselfly.peer.engine") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Damselfly host peer engine")
    add_engine_flags(ap, home_required=True)
    ap.add_argument("--foreground", action="store_true", help="log to the console as well")
    ap.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)
    return ap


def add_engine_flags(ap: argparse.ArgumentParser, home_required: bool = False) -> None:
    """The flags that configure a host's engine (shared by the engine, dfget and dfdaemon)."""
    ap.add_argument(
        "--home",
        required=home_required,
        help="work home: data/, logs/, the engine socket (default ~/.small-dragonfly)",
    )
    ap.add_argument("--port", help="the engine's peer upload port (default: a free one)")
    ap.add_argument("--ip", help="the address peers reach this engine at (default: auto)")
    ap.add_argument("--alivetime", help="the engine exits after this long idle (default 5m)")
    ap.add_argument("--expiretime", help="delete task data idle this long (default 3m)")
    ap.add_argument("--totallimit", help="host-wide download rate, e.g. 100M (default: none)")
    ap.add_argument("--stall-timeout", help=argparse.SUPPRESS)
    ap.add_argument(
        "--cluster-token-file",
        help="file holding the cluster token, sent to supernodes and peers and required of "
        "peers fetching from this host (default: none)",
    )
    ap.add_argument("--tls-cert", help="serve pieces to peers over HTTPS: PEM certificate")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-ca", help="talk HTTPS to supernodes and peers, trusting this CA (PEM)")
    ap.add_argument("--verbose", action="store_true", help="debug logging")
    add_log_flags(ap)


def config_from_args(
    ns: argparse.Namespace,
    home: str | None = None,
    totallimit: int | None = None,
    foreground: bool | None = None,
    security: ClusterSecurity | None = None,
) -> EngineConfig:
    """An EngineConfig from parsed engine flags; ``home``/``totallimit`` are fallbacks (e.g.
    from a config file) used when the flag is absent."""
    home_text = ns.home or home or str(default_home())
    return EngineConfig(
        home=Path(os.path.abspath(os.path.expanduser(home_text))),
        port=validate_port(ns.port, "--port") if ns.port is not None else 0,
        ip=validate_ip(ns.ip or ""),
        alivetime=_duration(ns.alivetime, "--alivetime", DEFAULT_ALIVETIME),
        expiretime=_duration(ns.expiretime, "--expiretime", DEFAULT_EXPIRETIME),
        totallimit=(
            parse_rate(ns.totallimit, "--totallimit") if ns.totallimit is not None else totallimit
        ),
        verbose=bool(ns.verbose),
        foreground=bool(getattr(ns, "foreground", False) if foreground is None else foreground),
        ready_fd=int(getattr(ns, "ready_fd", -1)),
        stall_timeout=_positive(
            _duration(ns.stall_timeout, "--stall-timeout", DEFAULT_STALL_TIMEOUT),
            "--stall-timeout",
        ),
        log=log_config(ns),
        security=_security(ns, security or ClusterSecurity()),
    )


def _security(ns: argparse.Namespace, fallback: ClusterSecurity) -> ClusterSecurity:
    """Flags win over ``fallback`` (a config file's), each on its own."""

    def pick(flag: str, default: str) -> str | None:
        return getattr(ns, flag, None) or default or None

    return ClusterSecurity.from_paths(
        pick("cluster_token_file", fallback.token_file),
        pick("tls_cert", fallback.tls_cert),
        pick("tls_key", fallback.tls_key),
        pick("tls_ca", fallback.tls_ca),
    )


def _duration(text: str | None, what: str, default: float) -> float:
    return parse_duration(text, what) if text is not None else default


def _positive(value: float, what: str) -> float:
    if value <= 0:
        raise ConfigError(f"invalid {what} {value:g}", "must be more than 0")
    return value
