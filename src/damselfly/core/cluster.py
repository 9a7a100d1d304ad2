"""Cluster security settings shared by every component: the cluster token and TLS between them.

Both are off by default (the local demo). See docs/deploy.md, "Cluster token and TLS".

- **Token.** ``--cluster-token-file FILE`` (never the token on a command line): when set, the
  supernode API (all but ``/_ping``) and every piece server answer only requests carrying it in
  ``X-Damselfly-Token`` (compared in constant time; 401 otherwise), and every client sends it.
- **TLS.** ``--tls-cert``/``--tls-key`` make the supernode API and piece port and an engine's
  piece server speak HTTPS; clients verify them against ``--tls-ca`` (the cluster's CA).
"""

from __future__ import annotations

import hmac
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from damselfly.core.errors import ConfigError

TOKEN_HEADER = "X-Damselfly-Token"  # noqa: S105 (a header name, not a secret)
#: token files larger than this are refused (a token is a line, not a document)
MAX_TOKEN_FILE = 4096
MIN_TOKEN_LEN = 16
MAX_TOKEN_LEN = 1024
#: the body of a 401 for a missing or wrong token (it never echoes what was sent)
TOKEN_REFUSED = "this cluster requires its token (X-Damselfly-Token)"  # noqa: S105 (a message)
TOKEN_HINT = "give every component the same --cluster-token-file"  # noqa: S105 (a message)


def read_token_file(path: str) -> str:
    """The cluster token in ``path`` (one line, surrounding whitespace dropped); ConfigError
    naming the file, never its content, when unreadable or malformed."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise ConfigError(
            f"cannot read --cluster-token-file {path}: {e.strerror}", "check the path"
        ) from e
    if len(raw) > MAX_TOKEN_FILE:
        raise ConfigError(f"--cluster-token-file {path} is too large", "one line, the token")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"--cluster-token-file {path} is not ASCII text") from e
    if not MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN or not all(
        33 <= ord(c) < 127 for c in token
    ):
        raise ConfigError(
            f"--cluster-token-file {path} must hold one token of {MIN_TOKEN_LEN}.."
            f"{MAX_TOKEN_LEN} printable characters without spaces",
            "e.g. openssl rand -hex 32 > FILE",
        )
    return token


def request_token(headers: Mapping[str, str]) -> str | None:
    """The token a request carries: ``X-Damselfly-Token``, or ``Authorization: Bearer`` (what
    Prometheus and most tools can send)."""
    got = headers.get(TOKEN_HEADER)
    if got is not None:
        return got
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def token_ok(expected: str, got: str | None) -> bool:
    """Whether ``got`` is the cluster token (constant time; no token configured: always)."""
    if not expected:
        return True
    if got is None:
        return False
    return hmac.compare_digest(expected.encode(), got.encode("utf-8", "surrogateescape"))


def _file(path: str, flag: str) -> str:
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(p):
        raise ConfigError(f"{flag} file {path} does not exist")
    return p


@dataclass(frozen=True, slots=True)
class ClusterSecurity:
    """What a component was told: file paths (no secret is kept in here, only where to read it).

    ``token`` is read once at start-up by ``load``; it is never put in an argv or a log.
    """

    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    @classmethod
    def from_paths(
        cls, token_file: str | None, cert: str | None, key: str | None, ca: str | None
    ) -> ClusterSecurity:
        if bool(cert) != bool(key):
            raise ConfigError("--tls-cert and --tls-key go together", "give both or neither")
        return cls(
            token_file=_file(token_file, "--cluster-token-file") if token_file else "",
            tls_cert=_file(cert, "--tls-cert") if cert else "",
            tls_key=_file(key, "--tls-key") if key else "",
            tls_ca=_file(ca, "--tls-ca") if ca else "",
        )

    def argv(self) -> list[str]:
        out: list[str] = []
        for flag, value in (
            ("--cluster-token-file", self.token_file),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-ca", self.tls_ca),
        ):
            if value:
                out += [flag, value]
        return out

    def token(self) -> str:
        return read_token_file(self.token_file) if self.token_file else ""

    def server_ssl(self) -> ssl.SSLContext | None:
        """The TLS context of a server (None: plain HTTP)."""
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot load --tls-cert {self.tls_cert} / --tls-key {self.tls_key}: "
                f"{getattr(e, 'reason', None) or e.__class__.__name__}",
                "give a PEM certificate and its private key",
            ) from e
        return ctx

    def client_ssl(self) -> ssl.SSLContext | None:
        """The TLS context of a client towards supernodes and peers (None: plain HTTP)."""
        if not self.tls_ca:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            ctx.load_verify_locations(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot load --tls-ca {self.tls_ca}: "
                f"{getattr(e, 'reason', None) or e.__class__.__name__}",
                "give the cluster CA's PEM certificate",
            ) from e
        return ctx
