"""Private content, the pure part: which headers are credentials, and the supernode's brief memory
of origin access checks (docs/protocol.md, "Private tasks").

- A registration whose headers carry credentials (``Authorization``, ``Cookie``,
  ``Proxy-Authorization``, or a name containing token/auth/key/secret/session) makes its task
  *private*: the supernode then grants the task to a peer only after that peer's own headers
  opened the origin URL.
- Check results are remembered for ``ttl`` seconds under an HMAC-SHA256, with a per-process random
  key, of (scope, credential headers): the credentials themselves are never kept, and a key cannot
  be recomputed outside the process (a dump of the cache reveals nothing to test guesses with).
- The *scope* of a URL (``access_scope``) is what the origin authorizes as one unit: for a
  registry's ``/v2/<name>/blobs/<digest>`` and ``/v2/<name>/manifests/<reference>`` it is
  (scheme, host, port, repository name) — registries grant pull per repository (a token's
  ``repository:<name>:pull``), so credentials that open one blob of a repository open them all;
  anything else, or anything odd about such a URL, is the full URL (docs/reliability.md,
  "Private content").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from damselfly.core.clock import Clock

#: header names that are credentials whatever their value
CREDENTIAL_NAMES = frozenset({"authorization", "cookie", "proxy-authorization"})
#: a header whose (lower-case) name contains one of these is a credential too (X-Auth-Token,
#: X-Api-Key, X-Session-Id, X-Amz-Security-Token, Private-Token …)
CREDENTIAL_PARTS = ("token", "auth", "key", "secret", "session")

#: how long an origin check answers for the same (scope, credentials)
CHECK_TTL = 60.0
#: checks remembered at most (oldest dropped first): bounds memory whatever peers send
MAX_CHECKS = 4096


def is_credential(name: str) -> bool:
    n = name.strip().lower()
    return n in CREDENTIAL_NAMES or any(p in n for p in CREDENTIAL_PARTS)


def credential_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The credential headers among ``headers`` (names kept as given)."""
    return {k: v for k, v in headers.items() if is_credential(k)}


def is_private(headers: Mapping[str, str]) -> bool:
    """Whether a registration with these headers makes its task private."""
    return any(is_credential(k) for k in headers)


# The distribution spec's grammar (distribution/reference): a repository name is path
# components of lower-case alphanumerics joined by one separator ("." "_" "__" or dashes), at
# most 255 characters in all; a digest is algorithm:encoded; a tag is at most 128 word
# characters, dots and dashes, not starting with either. Anything outside it (upper case, "%",
# "..", "//", a trailing "/") is not scoped: the registry's own router might read it otherwise.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{1,1024}"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REGISTRY_PATH = re.compile(
    rf"/v2/(?P<name>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"/(?:blobs/{_DIGEST}|manifests/(?:{_DIGEST}|{_TAG}))"
)
#: path components that are route words of the API: a name holding one is not scoped, so that
#: no reading of the path other than ours can exist (``/v2/a/blobs/b/blobs/…``)
_ROUTE_WORDS = frozenset({"blobs", "manifests", "tags", "uploads", "referrers"})
_MAX_NAME = 255
_DEFAULT_PORTS = {"http": 80, "https": 443}


def access_scope(url: str) -> tuple[str, ...]:
    """What the origin authorizes as one unit when it answers an access check of ``url``.

    ``("repository", scheme, host, port, name)`` for a registry blob or manifest URL
    (``/v2/<name>/blobs/<digest>``, ``/v2/<name>/manifests/<tag or digest>``) with no query, no
    fragment and no user info; ``("url", url)`` for everything else. Host is lower-cased and
    the port made explicit (default ports), since those name the same server; nothing else is
    normalised: a URL the function cannot read with certainty keeps its own, exact scope.
    """
    # urlsplit drops tabs and newlines and strips leading blanks: such a URL is not what the
    # server would be asked for, so it is not read at all
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        return ("url", url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("url", url)
    scheme, host = parts.scheme.lower(), parts.hostname
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or "?" in url
        or "#" in url
    ):
        return ("url", url)
    m = _REGISTRY_PATH.fullmatch(parts.path)
    if m is None:
        return ("url", url)
    name = m.group("name")
    if len(name) > _MAX_NAME or _ROUTE_WORDS.intersection(name.split("/")):
        return ("url", url)
    port = _DEFAULT_PORTS[scheme] if port is None else port
    return ("repository", scheme, host, str(port), name)


def check_key(secret: bytes, url: str, headers: Mapping[str, str]) -> bytes:
    """The cache key of an access check: HMAC-SHA256(secret, scope of url + credential headers).

    The scope (``access_scope``) rather than the URL: one check answers for every URL the
    origin authorizes alike (all blobs of one registry repository). Names are compared
    case-insensitively and in any order (the origin sees the same request); each part is
    length-prefixed, and a scope's kind fixes its number of parts, so that no two different
    inputs share an encoding.
    """
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    parts = [p.encode() for p in access_scope(url)]
    for k, v in sorted((k.strip().lower(), v) for k, v in credential_headers(headers).items()):
        parts += [k.encode(), v.encode()]
    for p in parts:
        mac.update(len(p).to_bytes(4, "big"))
        mac.update(p)
    return mac.digest()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The origin's answer to one access check: ``allowed``, and its status (for the message)."""

    allowed: bool
    status: int


class CheckCache:
    """Recent access checks by key, each valid ``ttl`` seconds; bounded to ``limit`` entries."""

    def __init__(
        self,
        clock: Clock,
        ttl: float = CHECK_TTL,
        limit: int = MAX_CHECKS,
        secret: bytes | None = None,
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.limit = limit
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, CheckResult]] = OrderedDict()

    def key(self, url: str, headers: Mapping[str, str]) -> bytes:
        return check_key(self.secret, url, headers)

    def get(self, key: bytes) -> CheckResult | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        expires, result = hit
        if self.clock.now() >= expires:
            del self._entries[key]
            return None
        return result

    def put(self, key: bytes, result: CheckResult) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self.clock.now() + self.ttl, result)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CheckCache({len(self._entries)} entries, ttl={self.ttl:g}s)"
