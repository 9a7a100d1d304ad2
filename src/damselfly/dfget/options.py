"""dfget's flags and config file (v1 names and meanings), resolved once into ``Options``.

Precedence: built-in defaults < config file (``/etc/dragonfly/dfget.yml`` or ``--config FILE``;
keys ``nodes``, ``localLimit``, ``minRate``, ``totalLimit``, ``workHome``, and the cluster
security paths ``clusterTokenFile``, ``tlsCert``, ``tlsKey``, ``tlsCA``) < command line. The one
v1 default Damselfly changes: no rate limit unless one is set.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from damselfly.core.cluster import ClusterSecurity
from damselfly.core.configfile import read_config_file
from damselfly.core.errors import BadRequest, ConfigError
from damselfly.core.ids import parse_filter, validate_md5, validate_url
from damselfly.core.nodes import parse_nodes
from damselfly.core.protocol import PATTERNS
from damselfly.core.units import parse_duration, parse_rate, parse_size
from damselfly.peer.config import EngineConfig, add_engine_flags, config_from_args, default_home

SYSTEM_CONFIG = "/etc/dragonfly/dfget.yml"
DEFAULT_NODE = "127.0.0.1:8002"
#: dfget.yml keys of the cluster security paths (core/cluster.py) → ClusterSecurity fields
SECURITY_KEYS = {
    "clusterTokenFile": "token_file",
    "tlsCert": "tls_cert",
    "tlsKey": "tls_key",
    "tlsCA": "tls_ca",
}
CONFIG_KEYS = {
    "nodes",
    "localLimit",
    "minRate",
    "totalLimit",
    "workHome",
    "clientQueueSize",
    *SECURITY_KEYS,
}


@dataclass(frozen=True)
class FileConfig:
    """What a dfget.yml may set (None: not set)."""

    nodes: list[str] | None = None
    locallimit: int | None = None
    minrate: int | None = None
    totallimit: int | None = None
    home: str | None = None
    security: ClusterSecurity = field(default_factory=ClusterSecurity)


@dataclass
class Options:
    url: str
    output: str
    nodes: list[str]
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    locallimit: int | None = None
    totallimit: int | None = None
    minrate: int | None = None
    timeout: float | None = None
    md5: str = ""
    identifier: str = ""
    filter: list[str] = field(default_factory=list)
    pattern: str = "p2p"
    notbs: bool = False
    callsystem: str = ""
    cacerts: list[str] = field(default_factory=list)
    insecure: bool = False
    showbar: bool = False
    console: bool = False
    verbose: bool = False
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(default_home()))

    def request(self) -> dict[str, Any]:
        """The download request sent over the engine's control socket (headers only there)."""
        return {
            "url": self.url,
            "output": self.output,
            "headers": dict(self.headers),
            "md5": self.md5,
            "identifier": self.identifier,
            "filter": list(self.filter),
            "pattern": self.pattern,
            "nodes": list(self.nodes),
            "locallimit": self.locallimit,
            "totallimit": self.totallimit,
            "minrate": self.minrate,
            "timeout": self.timeout,
            "notbs": self.notbs,
            "callsystem": self.callsystem,
            "cacerts": list(self.cacerts),
            "insecure": self.insecure,
        }


# -- the command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dfget",
        description="Download a file through the Damselfly P2P swarm (Dragonfly v1 compatible).",
        epilog="subcommands: 'dfget server' runs this host's engine in the foreground; "
        "'dfget version' prints the version.",
    )
    ap.add_argument("-u", "--url", help="source URL (http or https)")
    ap.add_argument("-o", "--output", help="destination file (default: the URL's last segment)")
    ap.add_argument(
        "-n",
        "--node",
        action="append",
        default=[],
        help=f"supernodes host[:port][=weight], comma separated (default {DEFAULT_NODE})",
    )
    ap.add_argument("-s", "--locallimit", help="rate limit for this download, e.g. 20M")
    ap.add_argument("--minrate", help="minimal rate, for the timeout: length/minrate + 10s")
    ap.add_argument("-e", "--timeout", help="timeout of the whole download, e.g. 300 or 5m")
    ap.add_argument("-m", "--md5", default="", help="expected md5 of the file")
    ap.add_argument("-i", "--identifier", default="", help="extra task identity")
    ap.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        help="&-separated query keys ignored for the task identity",
    )
    ap.add_argument(
        "--header", action="append", default=[], help="'Key: Value' sent to the origin (repeatable)"
    )
    ap.add_argument(
        "-p",
        "--pattern",
        default="p2p",
        choices=PATTERNS,
        help="p2p (default), cdn (supernodes only) or source (origin only)",
    )
    ap.add_argument("--notbs", action="store_true", help="never fall back to the origin")
    ap.add_argument("--callsystem", default="", help="caller name (a metrics label)")
    ap.add_argument(
        "--cacerts",
        action="append",
        default=[],
        help="CA certificates file for the origin's TLS (repeatable)",
    )
    ap.add_argument("--insecure", action="store_true", help="don't check the origin's TLS")
    ap.add_argument("-b", "--showbar", action="store_true", help="show a progress bar")
    ap.add_argument("--console", action="store_true", help="log to the console")
    add_engine_flags(ap)
    ap.add_argument("--config", help=f"config file (default {SYSTEM_CONFIG} when present)")
    return ap


def build_server_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dfget server", description="Run this host's peer engine in the foreground."
    )
    add_engine_flags(ap)
    ap.add_argument("--config", help=f"config file (default {SYSTEM_CONFIG} when present)")
    return ap


# -- the config file -----------------------------------------------------------------------


def load_file_config(path: str | None) -> FileConfig:
    """``--config FILE`` (must exist), else the system file when present, else nothing."""
    got = read_config_file(path, SYSTEM_CONFIG)
    if got is None:
        return FileConfig()
    return parse_file_config(*got)


def parse_file_config(text: bytes | str, path: str = "config") -> FileConfig:
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if obj is None:
        return FileConfig()
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values")
    for key in obj:
        if key not in CONFIG_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in {path}",
                f"known keys: {', '.join(sorted(CONFIG_KEYS - {'clientQueueSize'}))}",
            )
    nodes = obj.get("nodes")
    if nodes is not None:
        if isinstance(nodes, str):
            nodes = [nodes]
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ConfigError(f"'nodes' in {path} must be a list of host[:port][=weight]")
        parse_nodes(nodes)
    home = obj.get("workHome")
    if home is not None and (not isinstance(home, str) or not home):
        raise ConfigError(f"'workHome' in {path} must be a directory path")
    paths: dict[str, str] = {}
    for key, name in SECURITY_KEYS.items():
        v = obj.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError(f"'{key}' in {path} must be a file path")
        if v:
            paths[name] = v
    return FileConfig(
        nodes=nodes,
        locallimit=_opt(obj, "localLimit", lambda v: parse_rate(v, "localLimit")),
        minrate=_opt(obj, "minRate", lambda v: parse_rate(v, "minRate")),
        totallimit=_opt(obj, "totalLimit", lambda v: parse_rate(v, "totalLimit")),
        home=home,
        security=ClusterSecurity.from_paths(
            paths.get("token_file"),
            paths.get("tls_cert"),
            paths.get("tls_key"),
            paths.get("tls_ca"),
        ),
    )


def _opt(obj: dict[str, Any], key: str, parse: Any) -> Any:
    return parse(obj[key]) if obj.get(key) is not None else None


# -- resolution ----------------------------------------------------------------------------


def parse_header(text: str) -> tuple[str, str]:
    """``"Key: Value"`` → ("Key", "Value"); the value is never echoed in an error."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n\x00"):
        shown = (name.split() or [""])[0][:40]  # never more: a value may follow a space
        raise ConfigError(f"invalid --header {shown!r}…", "use --header 'Key: Value'")
    value = value.strip()
    if any(c in value for c in "\r\n\x00"):
        raise ConfigError(f"invalid --header {name!r}: the value has control characters")
    return name, value


def default_output_name(url: str) -> str:
    """v1: the URL's last path segment."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ConfigError(
            f"cannot name the output after the URL {url!r}", "give the output file with -o"
        )
    return name


def resolve_output(output: str | None, url: str, cwd: str) -> str:
    """The absolute output path; an error when it is a directory or cannot be written."""
    path = output if output else default_output_name(url)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd, path)
    path = os.path.normpath(path)
    if os.path.isdir(path) or (output or "").endswith("/"):
        raise ConfigError(f"output {path} is a directory", "give a file name with -o")
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise ConfigError(f"the output's directory {d} does not exist", "create it first")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"the output's directory {d} is not writable", "choose another -o")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ConfigError(f"output {path} exists and is not a regular file", "choose another -o")
    return path


def engine_config(ns: argparse.Namespace, fc: FileConfig, foreground: bool = False) -> EngineConfig:
    return config_from_args(
        ns, home=fc.home, totallimit=fc.totallimit, foreground=foreground, security=fc.security
    )


def resolve(ns: argparse.Namespace, fc: FileConfig, cwd: str) -> Options:
    """Flags (already parsed) + file config → Options; raises ConfigError for bad values."""
    if not ns.url:
        raise ConfigError("missing --url", "give the file's URL with -u")
    try:
        url = validate_url(ns.url)
        md5 = validate_md5(ns.md5 or "")
    except BadRequest as e:
        raise ConfigError(str(e)) from e
    nodes_spec = ns.node or fc.nodes or [DEFAULT_NODE]
    nodes = [s.strip() for item in nodes_spec for s in item.split(",") if s.strip()]
    parse_nodes(nodes)  # validates
    headers: dict[str, str] = {}
    for h in ns.header:
        k, v = parse_header(h)
        headers[k] = v
    cacerts = []
    for c in ns.cacerts:
        p = os.path.abspath(os.path.expanduser(c))
        if not os.path.isfile(p):
            raise ConfigError(f"--cacerts file {c} does not exist")
        cacerts.append(p)
    timeout = parse_duration(ns.timeout, "--timeout") if ns.timeout else None
    return Options(
        url=url,
        output=resolve_output(ns.output, url, cwd),
        nodes=nodes,
        headers=headers,
        locallimit=(
            parse_rate(ns.locallimit, "--locallimit")
            if ns.locallimit is not None
            else fc.locallimit
        ),
        totallimit=(
            parse_rate(ns.totallimit, "--totallimit")
            if ns.totallimit is not None
            else fc.totallimit
        ),
        minrate=(
            (parse_size(ns.minrate, "--minrate") or None) if ns.minrate is not None else fc.minrate
        ),
        timeout=timeout or None,
        md5=md5,
        identifier=ns.identifier or "",
        filter=parse_filter(ns.filter),
        pattern=ns.pattern,
        notbs=bool(ns.notbs),
        callsystem=ns.callsystem or "",
        cacerts=cacerts,
        insecure=bool(ns.insecure),
        showbar=bool(ns.showbar),
        console=bool(ns.console),
        verbose=bool(ns.verbose),
        engine=engine_config(ns, fc),
    )
