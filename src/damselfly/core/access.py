"""Private content, the pure part: which headers are credentials, and the supernode's brief memory
of origin access checks (docs/protocol.md, "Private tasks").

- A registration whose headers carry credentials (``Authorization``, ``Cookie``,
  ``Proxy-Authorization``, or a name containing token/auth/key/secret/session) makes its task
  *private*: the supernode then grants the task to a peer only after that peer's own headers
  opened the origin URL.
- Check results are remembered for ``ttl`` seconds under an HMAC-SHA256, with a per-process random
  key, of (url, credential headers): the credentials themselves are never kept, and a key cannot
  be recomputed outside the process (a dump of the cache reveals nothing to test guesses with).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from damselfly.core.clock import Clock

#: header names that are credentials whatever their value
CREDENTIAL_NAMES = frozenset({"authorization", "cookie", "proxy-authorization"})
#: a header whose (lower-case) name contains one of these is a credential too (X-Auth-Token,
#: X-Api-Key, X-Session-Id, X-Amz-Security-Token, Private-Token …)
CREDENTIAL_PARTS = ("token", "auth", "key", "secret", "session")

#: how long an origin check answers for the same (url, credentials)
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


def check_key(secret: bytes, url: str, headers: Mapping[str, str]) -> bytes:
    """The cache key of an access check: HMAC-SHA256(secret, url + credential headers).

    Names are compared case-insensitively and in any order (the origin sees the same request);
    each part is length-prefixed so that no two different inputs share an encoding.
    """
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    parts = [url.encode()]
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
