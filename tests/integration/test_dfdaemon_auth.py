"""Token auth through dfdaemon: Debian's ``docker-registry`` with ``auth: token`` and a real token
service run by the test (an aiohttp app that checks basic credentials and issues RS256 JWTs whose
``x5c`` certificate is the registry's ``rootcertbundle``, as distribution's registry/auth/token
verifies them). skopeo does the 401 → token → retry flow through dfdaemon as the mirror; the
layers go through the swarm; no Bearer token shows up in a log, an argv, ``/metrics`` or a file
under the homes. ``test_dfdaemon_authload.py`` measures and bounds what the registry and the
token service see when several hosts pull at once.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.integration.test_dfdaemon_images import (
    Registry,
    auth_file,
    build_image,
    needs_registry,
    pull_via_mirror,
    push,
    serve_app,
    start_dfdaemon,
    start_registry,
)
from tests.integration.test_dfdaemon_registry import (
    SKOPEO_AGENT,
    assert_same_image,
    mirror_config,
)
from tests.procs import Procs, http_get, start_supernode

SERVICE = "damselfly-registry"
ISSUER = "damselfly-test-token-issuer"
TOKEN_TTL = 300


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """A registry token service (the distribution token spec): ``GET /token?service=…&scope=…``
    with basic credentials answers a signed JWT granting the requested pull/push actions."""

    root: Path
    user: str = "damsel"
    password: str = field(default_factory=lambda: "tok-" + secrets.token_hex(8), repr=False)
    issued: list[str] = field(default_factory=list, repr=False)
    requests: Counter[str] = field(default_factory=Counter)  # "ok" / "denied" / "anonymous"
    port: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "damselfly test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = self.root / "token-root.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict[str, object]:
        return {
            "token": {
                "realm": self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.bundle),
            }
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.handle)
        return app

    def count(self, what: str) -> int:
        with self._lock:
            return self.requests[what]

    def _record(self, what: str, token: str = "") -> None:
        with self._lock:
            self.requests[what] += 1
            if token:
                self.issued.append(token)

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            self._record("anonymous")
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="token"'})
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
        if (user, password) != (self.user, self.password):
            self._record("denied")
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="token"'})
        if request.query.get("service") != SERVICE:
            self._record("denied")
            return web.Response(status=400, text="unknown service\n")
        access = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in ("pull", "push")]
            if kind == "repository" and name and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        token = self.sign(user, access)
        self._record("ok", token)
        body = {"token": token, "access_token": token, "expires_in": TOKEN_TTL}
        return web.json_response(body)

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        now = int(time.time())
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + TOKEN_TTL,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(x, separators=(",", ":")).encode()) for x in (header, claims)
        )
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"


def start_token_registry(procs: Procs, root: Path, ts: TokenService) -> Registry:
    return start_registry(procs, root, extra={"auth": ts.registry_auth()})


def assert_secrets_nowhere(
    secrets_: list[str], texts: list[str], homes: list[Path], pids: list[int]
) -> None:
    """No secret in the given process outputs/metrics, files under the homes, or argv."""
    assert secrets_
    for text in texts:
        for s in secrets_:
            assert s not in text
    for home in homes:
        for p in home.rglob("*"):
            if p.is_file() and p.stat().st_size < 4 << 20:
                data = p.read_bytes()
                for s in secrets_:
                    assert s.encode() not in data, p
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        for s in secrets_:
            assert s.encode() not in cmdline


@needs_registry
def test_token_service_is_what_the_registry_checks(procs: Procs, tmp_path: Path) -> None:
    """The parts themselves: the registry asks for a Bearer token with the service's realm, and
    a token from the service opens the catalog while a forged one does not."""
    ts = TokenService(tmp_path / "ts")
    with serve_app(ts.app(), "token-service") as ts.port:
        reg = start_token_registry(procs, tmp_path / "reg", ts)

        def get(path: str, token: str = "") -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            req = urllib.request.Request(f"http://{reg.addr}{path}", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return int(r.status), ""
            except urllib.error.HTTPError as e:
                return int(e.code), e.headers.get("WWW-Authenticate", "")

        status, challenge = get("/v2/")
        assert status == 401
        assert challenge.startswith("Bearer ") and f'realm="{ts.realm}"' in challenge
        assert f'service="{SERVICE}"' in challenge
        good = ts.sign(ts.user, [{"type": "registry", "name": "catalog", "actions": ["*"]}])
        assert get("/v2/_catalog", good)[0] == 200
        head, claims, _sig = good.split(".")
        assert get("/v2/_catalog", f"{head}.{claims}.{_b64url(b'x' * 256)}")[0] == 401


@needs_registry
def test_bearer_token_pull_through_dfdaemon(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [2_500_000, 900_000], seed=11)
    ts = TokenService(tmp_path / "ts")
    with serve_app(ts.app(), "token-service") as ts.port:
        reg = start_token_registry(procs, tmp_path / "reg", ts)
        push(
            img,
            reg,
            "private/tok",
            auth_file(tmp_path / "push.json", {reg.addr: (ts.user, ts.password)}),
        )
        pushed = len(ts.issued)
        sn = start_supernode(procs, tmp_path / "sn")
        d = start_dfdaemon(procs, tmp_path / "d" / "home", mirror_config(reg, sn.addr))
        # credentials for the mirror's host only: a pull that bypassed dfdaemon would fail
        creds = auth_file(tmp_path / "pull.json", {f"127.0.0.1:{d.port}": (ts.user, ts.password)})
        r = pull_via_mirror(reg, d.port, "private/tok", tmp_path / "out", tmp_path, creds)
        assert r.returncode == 0, r.stderr
        assert_same_image(tmp_path / "out", img.blobs)
        assert len(ts.issued) > pushed, "skopeo never fetched a pull token"
        # the layers went through the swarm: the supernode fetched each once, skopeo none
        assert reg.blob_gets(SKOPEO_AGENT) == {}
        fetched = reg.blob_gets()
        assert all(fetched.get(layer) == 1 for layer in img.layers), fetched
        # the registry really checked Bearer tokens on the way (401s before the token)
        assert any(s == 401 for _m, _p, s, _a in reg.requests())
        tokens = ts.issued[pushed:]
        metrics = [
            http_get(f"http://127.0.0.1:{d.port}/metrics")[1].decode(),
            http_get(f"http://{sn.addr}/metrics")[1].decode(),
        ]
        assert_secrets_nowhere(
            [*tokens, ts.password],
            [d.proc.output(), sn.proc.output(), *metrics],
            [d.home, sn.home, tmp_path / "d"],
            [d.proc.pid, sn.proc.pid],
        )
