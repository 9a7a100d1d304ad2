"""dfdaemon's routing decisions, pure: which requests go through the swarm, which go straight to
the origin, which CONNECT hosts are hijacked, and where a registry-mirror request is sent.

Rules come from v1's YAML (``proxies``, ``hijack_https``, ``registry_mirror``) and are parsed and
validated once at start-up (an error names the key). Decisions take a method and a URL and return
a value; nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from damselfly.core.errors import ConfigError

DEFAULT_REMOTE = "https://index.docker.io"
MAX_RULES = 256
MAX_REGEX = 1024


@dataclass(frozen=True)
class ProxyRule:
    """One ``proxies`` entry: URLs that ``regx`` finds (re.search, as v1's Go MatchString)."""

    regx: re.Pattern[str]
    use_https: bool = False
    direct: bool = False
    redirect: str = ""  # host[:port] that replaces the URL's host


@dataclass(frozen=True)
class HijackHost:
    regx: re.Pattern[str]
    insecure: bool = False
    certs: tuple[str, ...] = ()


@dataclass(frozen=True)
class MirrorConfig:
    remote: str = DEFAULT_REMOTE
    insecure: bool = False
    certs: tuple[str, ...] = ()
    direct: bool = False  # every request straight to the remote, no swarm
    #: containerd's ``?ns=<registry>`` → that registry's remote (``registry_mirror.namespaces``);
    #: empty: v1's behaviour, every request goes to ``remote`` whatever its ``ns``
    namespaces: tuple[tuple[str, MirrorConfig], ...] = ()

    def for_namespace(self, ns: str | None) -> MirrorConfig | None:
        """The remote for a request's ``ns`` (None: ``ns`` names a registry not configured)."""
        if ns is None or not self.namespaces:
            return self
        for name, remote in self.namespaces:
            if name == ns.lower():
                return remote
        return None


@dataclass(frozen=True)
class HijackConfig:
    cert: str = ""
    key: str = ""
    hosts: tuple[HijackHost, ...] = ()


@dataclass(frozen=True)
class Route:
    """What to do with one request: ``swarm`` (download through the peers) or ``direct``."""

    kind: str
    url: str

    @property
    def swarm(self) -> bool:
        return self.kind == "swarm"


@dataclass(frozen=True)
class Rules:
    proxies: tuple[ProxyRule, ...] = ()
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    hijack: HijackConfig = field(default_factory=HijackConfig)

    def route(self, method: str, url: str, has_range: bool = False) -> Route:
        """First matching rule wins; only whole-body GETs can go through the swarm."""
        if method != "GET" or has_range:
            return Route("direct", url)
        for rule in self.proxies:
            if rule.regx.search(url):
                if rule.direct:
                    return Route("direct", url)
                return Route("swarm", rewrite(url, rule))
        return Route("direct", url)

    def hijacked(self, host: str) -> HijackHost | None:
        """The ``hijack_https.hosts`` entry for a CONNECT target's host name (no port)."""
        if not (self.hijack.cert and self.hijack.key):
            return None
        for h in self.hijack.hosts:
            if h.regx.search(host):
                return h
        return None

    def mirror_url(self, path_qs: str) -> str:
        """The remote URL for a registry-mirror request (``/v2/…``) on the default remote."""
        return _remote_url(self.mirror, path_qs)

    def mirror_target(self, path_qs: str) -> tuple[MirrorConfig, str] | str:
        """(the remote, its URL) for a registry-mirror request, or the ``ns`` no remote serves.

        containerd adds ``?ns=<registry>`` to every request sent to a mirror. Without
        ``registry_mirror.namespaces`` the remote is the configured one and the parameter is
        dropped (v1); with it, ``ns`` picks the remote, and a request without ``ns`` (Docker,
        skopeo, CRI-O) goes to ``remote``.
        """
        ns = namespace_of(path_qs)
        mirror = self.mirror.for_namespace(ns)
        if mirror is None:
            return ns or ""
        return mirror, _remote_url(mirror, path_qs)


def namespace_of(path_qs: str) -> str | None:
    """containerd's ``ns`` query parameter (the first one, as Go's ``Query().Get`` reads it)."""
    for k, v in parse_qsl(urlsplit(path_qs).query, True):
        if k == "ns":
            return v
    return None


def _remote_url(mirror: MirrorConfig, path_qs: str) -> str:
    parts = urlsplit(path_qs)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, True) if k != "ns"])
    return mirror.remote.rstrip("/") + parts.path + (f"?{query}" if query else "")


def rewrite(url: str, rule: ProxyRule) -> str:
    """v1: ``use_https`` makes the swarm's URL https; ``redirect`` replaces the host."""
    parts = urlsplit(url)
    scheme = "https" if rule.use_https else parts.scheme
    netloc = rule.redirect or parts.netloc
    if scheme == "https" and parts.scheme == "http" and netloc.endswith(":80"):
        netloc = netloc[:-3]
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def is_mirror_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


# -- parsing (start-up) ----------------------------------------------------------------------


def parse_rules(
    proxies: list[dict[str, Any]],
    mirror: dict[str, Any],
    hijack: dict[str, Any],
    path: str = "config",
) -> Rules:
    if len(proxies) > MAX_RULES:
        raise ConfigError(f"'proxies' in {path} has more than {MAX_RULES} rules")
    rules = tuple(_proxy_rule(r, f"proxies[{i}]", path) for i, r in enumerate(proxies))
    return Rules(rules, _mirror(mirror, path), _hijack(hijack, path))


def _proxy_rule(obj: dict[str, Any], where: str, path: str) -> ProxyRule:
    _only(obj, ("regx", "use_https", "direct", "redirect"), where, path)
    redirect = _str(obj, "redirect", where, path)
    if redirect and not re.fullmatch(
        r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", redirect
    ):
        raise ConfigError(f"'{where}.redirect' in {path} must be host[:port], got {redirect!r}")
    return ProxyRule(
        regx=_regex(obj, where, path),
        use_https=_flag(obj, "use_https", where, path),
        direct=_flag(obj, "direct", where, path),
        redirect=redirect,
    )


def _mirror(obj: dict[str, Any], path: str) -> MirrorConfig:
    where = "registry_mirror"
    _only(obj, ("remote", "insecure", "certs", "direct", "namespaces"), where, path)
    default = _remote(obj, where, path)
    spaces = obj.get("namespaces") or {}
    if not isinstance(spaces, dict):
        raise ConfigError(
            f"'{where}.namespaces' in {path} must map registry names (containerd's ns=) to "
            "remotes, e.g. {ghcr.io: https://ghcr.io}"
        )
    if len(spaces) > MAX_RULES:
        raise ConfigError(f"'{where}.namespaces' in {path} has more than {MAX_RULES} entries")
    namespaces = []
    for ns, entry in spaces.items():
        w = f"{where}.namespaces.{ns}"
        if not isinstance(ns, str) or not _NS_RE.fullmatch(ns):
            raise ConfigError(
                f"'{where}.namespaces' in {path} has {ns!r}: a key must be a registry "
                "host[:port] as containerd sends it in ns= (e.g. docker.io)"
            )
        if isinstance(entry, str):
            entry = {"remote": entry}
        if not isinstance(entry, dict) or not entry.get("remote"):
            raise ConfigError(f"'{w}' in {path} must be a remote URL or a mapping with 'remote'")
        _only(entry, ("remote", "insecure", "certs", "direct"), w, path)
        namespaces.append((ns.lower(), _remote(entry, w, path)))
    return replace(default, namespaces=tuple(namespaces))


_NS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _remote(obj: dict[str, Any], where: str, path: str) -> MirrorConfig:
    remote = _str(obj, "remote", where, path) or DEFAULT_REMOTE
    parts = urlsplit(remote)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"'{where}.remote' in {path} must be an http(s) URL such as "
            f"https://your.private.registry, got {remote!r}"
        )
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"'{where}.remote' in {path} must be scheme://host[:port] only")
    return MirrorConfig(
        remote=f"{parts.scheme}://{parts.netloc}",
        insecure=_flag(obj, "insecure", where, path),
        certs=_certs(obj, where, path),
        direct=_flag(obj, "direct", where, path),
    )


def _hijack(obj: dict[str, Any], path: str) -> HijackConfig:
    where = "hijack_https"
    _only(obj, ("cert", "key", "hosts"), where, path)
    cert, key = _str(obj, "cert", where, path), _str(obj, "key", where, path)
    hosts_raw = obj.get("hosts") or []
    if not isinstance(hosts_raw, list) or not all(isinstance(h, dict) for h in hosts_raw):
        raise ConfigError(f"'{where}.hosts' in {path} must be a list of mappings")
    if hosts_raw and not (cert and key):
        raise ConfigError(
            f"'{where}' in {path} lists hosts but no 'cert' and 'key'",
            "make a CA with 'dfdaemon gen-ca' and name its files",
        )
    hosts = []
    for i, h in enumerate(hosts_raw):
        w = f"{where}.hosts[{i}]"
        _only(h, ("regx", "insecure", "certs"), w, path)
        hosts.append(
            HijackHost(_regex(h, w, path), _flag(h, "insecure", w, path), _certs(h, w, path))
        )
    return HijackConfig(cert, key, tuple(hosts))


def _only(obj: dict[str, Any], keys: tuple[str, ...], where: str, path: str) -> None:
    for k in obj:
        if k not in keys:
            raise ConfigError(
                f"unknown key {k!r} in '{where}' of {path}", f"known keys: {', '.join(keys)}"
            )


def _regex(obj: dict[str, Any], where: str, path: str) -> re.Pattern[str]:
    v = obj.get("regx")
    if not isinstance(v, str) or not v or len(v) > MAX_REGEX:
        raise ConfigError(f"'{where}.regx' in {path} must be a regular expression")
    try:
        return re.compile(v)
    except re.error as e:
        raise ConfigError(f"'{where}.regx' in {path} is not a valid regular expression: {e}") from e


def _flag(obj: dict[str, Any], key: str, where: str, path: str) -> bool:
    v = obj.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ConfigError(f"'{where}.{key}' in {path} must be true or false")
    return v


def _str(obj: dict[str, Any], key: str, where: str, path: str) -> str:
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ConfigError(f"'{where}.{key}' in {path} must be a string")
    return v


def _certs(obj: dict[str, Any], where: str, path: str) -> tuple[str, ...]:
    v = obj.get("certs") or []
    if not isinstance(v, list) or not all(isinstance(c, str) and c for c in v) or len(v) > 16:
        raise ConfigError(f"'{where}.certs' in {path} must be a list of CA file paths")
    return tuple(v)
