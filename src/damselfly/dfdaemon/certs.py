"""Certificates for HTTPS hijacking: ``dfdaemon gen-ca`` makes a CA; ``LeafCerts`` issues a leaf
certificate per host on the fly from it and keeps a capped cache of TLS server contexts.

Leaves are back-dated (clients with a slow clock still accept them) and short-lived. Their keys
live only in memory: ``ssl`` loads a chain only from files, so each one is written to a private
temporary file (0600, in a 0700 directory) that is removed as soon as it was loaded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from damselfly.core.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 30
BACKDATE = datetime.timedelta(days=2)
DEFAULT_CAP = 256


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def generate_ca(
    cert_path: str | Path, key_path: str | Path, cn: str = "Damselfly dfdaemon CA"
) -> None:
    """Write a new self-signed CA: the certificate (0644) and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(Path(key_path), key_pem)
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


class LeafCerts:
    """Issues leaf certificates from the CA in ``cert``/``key``; caches up to ``cap`` contexts."""

    def __init__(self, cert_path: str, key_path: str, cap: int = DEFAULT_CAP) -> None:
        try:
            ca_pem = Path(cert_path).read_bytes()
            key_pem = Path(key_path).read_bytes()
        except OSError as e:
            raise ConfigError(
                f"cannot read the hijack_https CA {e.filename}: {e.strerror}",
                "make one with 'dfdaemon gen-ca' or fix hijack_https.cert/key",
            ) from e
        try:
            self.ca = x509.load_pem_x509_certificate(ca_pem)
            ca_key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as e:
            raise ConfigError(
                f"hijack_https.cert/key ({cert_path}, {key_path}) are not a PEM certificate "
                f"and unencrypted key: {e}"
            ) from e
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError("hijack_https.key must be an EC or RSA private key")
        self._ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ca_key
        self._ca_pem = ca_pem
        self.cap = cap
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        # one key for every leaf: issuing stays cheap (a signature, no key generation)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.issued = 0

    def __len__(self) -> int:
        return len(self._contexts)

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server context presenting a leaf for ``host`` (cached; least recently used dropped)."""
        host = host.lower()
        ctx = self._contexts.get(host)
        if ctx is not None:
            self._contexts.move_to_end(host)
            return ctx
        ctx = self._make_context(host)
        self._contexts[host] = ctx
        while len(self._contexts) > self.cap:
            self._contexts.popitem(last=False)
        return ctx

    def issue(self, host: str) -> x509.Certificate:
        now = _now()
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        self.issued += 1
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.ca.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )

    def _make_context(self, host: str) -> ssl.SSLContext:
        cert = self.issue(host)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._ca_pem
        key = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_alpn_protocols(["http/1.1"])
        with tempfile.TemporaryDirectory(prefix="dfdaemon-leaf-") as d:  # created 0700
            path = Path(d) / "leaf.pem"
            _write_private(path, key + chain)
            ctx.load_cert_chain(path)
        return ctx
