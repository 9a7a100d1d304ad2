"""The ``dfdaemon`` command: this host's peer engine plus the registry mirror / HTTP(S) proxy.

``dfdaemon [--config FILE] [--home DIR] [--port N] [--node host:port]`` and
``dfdaemon gen-ca [--cert ca.crt] [--key ca.key]``. The YAML config uses v1's keys (``port``,
``registry_mirror``, ``proxies``, ``hijack_https``, ``node`` or ``supernodes``, ``dfget_flags``,
``ratelimit``, ``localrepo``, ``verbose``); an unknown key or a bad value is an error naming it.
``dfget_flags`` are dfget flags: the engine ones (``--port`` for the engine's peer port, ``--ip``,
``--home``, ``--totallimit``, ``--expiretime``) configure the engine; the download ones (``-f``
filters, ``-s``, ``--notbs``, ``-p``, ``--header``…) apply to every swarm download of the proxy.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from damselfly.core.configfile import read_config_file
from damselfly.core.errors import ConfigError
from damselfly.core.ids import parse_filter
from damselfly.core.logs import log_config
from damselfly.core.nodes import parse_nodes
from damselfly.core.units import parse_duration, parse_rate
from damselfly.dfdaemon.handler import DownloadDefaults
from damselfly.dfdaemon.rules import Rules, parse_rules
from damselfly.dfget.options import build_parser as build_dfget_parser
from damselfly.dfget.options import parse_header
from damselfly.peer.config import EngineConfig, config_from_args, validate_port

DEFAULT_PORT = 65001
DEFAULT_CONFIG = "/etc/dragonfly/dfdaemon.yml"
KNOWN_KEYS = (
    "port",
    "registry_mirror",
    "proxies",
    "hijack_https",
    "node",
    "supernodes",
    "dfget_flags",
    "ratelimit",
    "localrepo",
    "verbose",
    # cluster security (core/cluster.py; docs/deploy.md): file paths for the host's engine
    "cluster_token_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
)
SECURITY_KEYS = ("cluster_token_file", "tls_cert", "tls_key", "tls_ca")

if TYPE_CHECKING:
    from damselfly.dfdaemon.daemon import ProxySettings


@dataclass
class DaemonConfig:
    port: int = DEFAULT_PORT
    nodes: list[str] = field(default_factory=list)
    dfget_flags: list[str] = field(default_factory=list)
    ratelimit: int | None = None  # per-download rate (v1: becomes dfget's --locallimit)
    localrepo: str = ""
    verbose: bool = False
    registry_mirror: dict[str, Any] = field(default_factory=dict)
    proxies: list[dict[str, Any]] = field(default_factory=list)
    hijack_https: dict[str, Any] = field(default_factory=dict)
    rules: Rules = field(default_factory=Rules)
    #: cluster_token_file, tls_cert, tls_key, tls_ca → a path (the engine reads them)
    security: dict[str, str] = field(default_factory=dict)


def parse_daemon_config(obj: Any, path: str = "config") -> DaemonConfig:
    """Validate a dfdaemon.yml mapping (already YAML-decoded)."""
    if obj is None:
        return DaemonConfig()
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values")
    for key in obj:
        if key not in KNOWN_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in {path}", f"known keys: {', '.join(KNOWN_KEYS)}"
            )
    if "node" in obj and "supernodes" in obj:
        raise ConfigError(f"{path} sets both 'node' and 'supernodes'", "keep one of them")
    nodes = obj.get("node", obj.get("supernodes")) or []
    if isinstance(nodes, str):
        nodes = [nodes]
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ConfigError(f"'node' in {path} must be a list of host[:port][=weight]")
    parse_nodes(nodes)
    flags = obj.get("dfget_flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ConfigError(f"'dfget_flags' in {path} must be a list of strings")
    cfg = DaemonConfig(
        port=validate_port(obj["port"], "port") if obj.get("port") is not None else DEFAULT_PORT,
        nodes=list(nodes),
        dfget_flags=list(flags),
        ratelimit=parse_rate(obj.get("ratelimit"), "ratelimit"),
        localrepo=_path(obj, "localrepo", path),
        verbose=_bool(obj, "verbose", path),
        registry_mirror=_mapping(obj, "registry_mirror", path),
        proxies=_list_of_mappings(obj, "proxies", path),
        hijack_https=_mapping(obj, "hijack_https", path),
        security={k: _path(obj, k, path) for k in SECURITY_KEYS if obj.get(k) is not None},
    )
    cfg.rules = parse_rules(cfg.proxies, cfg.registry_mirror, cfg.hijack_https, path)
    return cfg


def _path(obj: dict[str, Any], key: str, path: str) -> str:
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str) or not v:
        raise ConfigError(f"'{key}' in {path} must be a directory path")
    return v


def _bool(obj: dict[str, Any], key: str, path: str) -> bool:
    v = obj.get(key, False)
    if not isinstance(v, bool):
        raise ConfigError(f"'{key}' in {path} must be true or false")
    return v


def _mapping(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    v = obj.get(key) or {}
    if not isinstance(v, dict):
        raise ConfigError(f"'{key}' in {path} must be a mapping")
    return v


def _list_of_mappings(obj: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    v = obj.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConfigError(f"'{key}' in {path} must be a list of mappings")
    return v


def load_daemon_config(path: str | None) -> DaemonConfig:
    """``--config FILE`` (must exist), else /etc/dragonfly/dfdaemon.yml when present."""
    got = read_config_file(path, DEFAULT_CONFIG)
    if got is None:
        return DaemonConfig()
    text, path = got
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    return parse_daemon_config(obj, path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dfdaemon",
        description="Damselfly host daemon: this host's peer engine and the registry mirror / "
        "HTTP(S) proxy. 'dfdaemon gen-ca' writes a CA for hijack_https.",
    )
    ap.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG} when present)")
    ap.add_argument("--home", help="the engine's work home (default ~/.small-dragonfly)")
    ap.add_argument("--port", help=f"the proxy port (default {DEFAULT_PORT})")
    ap.add_argument("--node", action="append", default=[], help="supernode host[:port]")
    ap.add_argument("--listen", default="0.0.0.0", help="the proxy's address (default 0.0.0.0)")
    ap.add_argument("--verbose", action="store_true", help="debug logging")
    ap.add_argument("--log-format", help="text (default) or json (one JSON object per line)")
    ap.add_argument("--cluster-token-file", help="file holding the cluster token (default none)")
    ap.add_argument("--tls-cert", help="serve pieces to peers over HTTPS: PEM certificate")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-ca", help="talk HTTPS to supernodes and peers, trusting this CA")
    return ap


def build_gen_ca_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dfdaemon gen-ca",
        description="Write a new CA certificate and key for hijack_https (the key mode 0600).",
    )
    ap.add_argument("--cert", default="ca.crt", help="certificate file to write (default ca.crt)")
    ap.add_argument("--key", default="ca.key", help="key file to write (default ca.key)")
    ap.add_argument("--cn", default="Damselfly dfdaemon CA", help="the CA's common name")
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    return ap


def gen_ca(argv: list[str]) -> int:
    from damselfly.dfdaemon.certs import generate_ca

    ap = build_gen_ca_parser()
    ns = ap.parse_args(argv)
    for p in (ns.cert, ns.key):
        if os.path.exists(p) and not ns.force:
            ap.error(f"{p} exists; remove it or pass --force")
    try:
        generate_ca(ns.cert, ns.key, ns.cn)
    except OSError as e:
        ap.error(f"cannot write {e.filename}: {e.strerror}")
    print(f"wrote CA certificate {ns.cert} and key {ns.key}")
    return 0


class _FlagError(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _FlagError(message)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["gen-ca"]:
        return gen_ca(args[1:])
    ap = build_parser()
    ns = ap.parse_args(args)
    try:
        cfg = load_daemon_config(ns.config)
        if ns.port is not None:
            cfg.port = validate_port(ns.port, "--port")
        if ns.node:
            cfg.nodes = [n for item in ns.node for n in item.split(",") if n.strip()]
            parse_nodes(cfg.nodes)
        if ns.verbose:
            cfg.verbose = True
        for key in SECURITY_KEYS:  # the command line wins over the file
            if getattr(ns, key) is not None:
                cfg.security[key] = getattr(ns, key)
        engine_cfg = engine_config(cfg, ns.home)
        if ns.log_format is not None:  # the command line wins over dfget_flags
            engine_cfg = replace(engine_cfg, log=log_config(ns, engine_cfg.log))
        settings = proxy_settings(cfg, ns.listen)
    except ConfigError as e:
        ap.error(str(e))
    from damselfly.dfdaemon.daemon import run_daemon

    return run_daemon(engine_cfg, settings)


def parse_dfget_flags(flags: list[str]) -> argparse.Namespace:
    """``dfget_flags`` parsed as dfget parses its command line (errors raised, not exiting)."""
    quiet = _QuietParser(prog="dfget_flags", add_help=False)
    for action in build_dfget_parser()._actions:  # dfget's flags, errors raised not exiting
        if action.option_strings and "-h" not in action.option_strings:
            quiet._add_action(action)
    try:
        ns = quiet.parse_args(flags)
    except _FlagError as e:
        raise ConfigError(f"invalid dfget_flags: {e}") from e
    if ns.url or ns.output:
        raise ConfigError("dfget_flags must not set --url or --output", "dfdaemon sets them")
    return ns


def download_defaults(cfg: DaemonConfig) -> DownloadDefaults:
    """The options of every swarm download: ``dfget_flags``, ``ratelimit`` and the nodes."""
    ns = parse_dfget_flags(cfg.dfget_flags)
    locallimit = cfg.ratelimit or parse_rate(ns.locallimit, "-s in dfget_flags")
    nodes = list(cfg.nodes)
    for item in ns.node or []:
        nodes += [n for n in item.split(",") if n.strip()]
    parse_nodes(nodes)
    headers = tuple(parse_header(h) for h in ns.header or [])
    return DownloadDefaults(
        nodes=tuple(nodes),
        filter=tuple(k for f in ns.filter or [] for k in parse_filter(f)),
        headers=headers,
        locallimit=locallimit,
        minrate=parse_rate(ns.minrate, "--minrate in dfget_flags"),
        timeout=parse_duration(ns.timeout, "--timeout in dfget_flags") if ns.timeout else None,
        notbs=bool(ns.notbs),
        pattern=ns.pattern or "p2p",
        identifier=ns.identifier or "",
        callsystem=ns.callsystem or "dfdaemon",
    )


def proxy_settings(cfg: DaemonConfig, listen: str = "0.0.0.0") -> ProxySettings:
    from damselfly.dfdaemon.daemon import ProxySettings

    scratch = Path(os.path.expanduser(cfg.localrepo)) if cfg.localrepo else None
    return ProxySettings(cfg.port, cfg.rules, download_defaults(cfg), listen, scratch)


def engine_config(cfg: DaemonConfig, home: str | None) -> EngineConfig:
    """The engine's config from ``dfget_flags`` (checked like dfget would); ``--home`` wins.

    A daemon's engine never exits when idle.
    """
    ns = parse_dfget_flags(cfg.dfget_flags)
    for flag, value in (("-s", ns.locallimit), ("--minrate", ns.minrate)):
        if value is not None:
            parse_rate(value, f"{flag} in dfget_flags")
    if home:
        ns.home = home
    if cfg.verbose:
        ns.verbose = True
    for key, value in cfg.security.items():  # the file's keys win over dfget_flags
        setattr(ns, key, value)
    ns.alivetime = "0"
    return config_from_args(ns, foreground=True)


if __name__ == "__main__":
    sys.exit(main())
