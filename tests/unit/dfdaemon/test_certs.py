"""Leaf certificates from a generated CA: they verify against the CA, are back-dated, name the
host, and the context cache is capped."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from damselfly.dfdaemon.certs import LeafCerts, generate_ca


def test_leaves_chain_to_the_ca_and_are_back_dated(tmp_path: Path) -> None:
    generate_ca(tmp_path / "ca.crt", tmp_path / "ca.key")
    leaves = LeafCerts(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    leaf = leaves.issue("registry.example")
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["registry.example"]
    now = datetime.datetime.now(datetime.UTC)
    assert leaf.not_valid_before_utc < now - datetime.timedelta(days=1)
    ip = leaves.issue("127.0.0.1")
    ip_san = ip.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in ip_san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_context_cache_is_capped_and_reused(tmp_path: Path) -> None:
    generate_ca(tmp_path / "ca.crt", tmp_path / "ca.key")
    leaves = LeafCerts(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"), cap=2)
    a = leaves.context_for("a.example")
    assert leaves.context_for("A.example") is a
    leaves.context_for("b.example")
    leaves.context_for("c.example")
    assert len(leaves) == 2 and leaves.issued == 3
    assert leaves.context_for("a.example") is not a  # evicted, issued again
