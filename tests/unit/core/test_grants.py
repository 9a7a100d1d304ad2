"""Grants (core/grants.py): signed by the supernode, checked by piece servers, with a fake clock."""

from __future__ import annotations

import base64

import pytest

from damselfly.core.clock import FakeClock
from damselfly.core.grants import (
    GrantError,
    GrantSigner,
    GrantVerifier,
    decode_public_key,
    parse,
)

TID = "ab" * 32
OTHER = "cd" * 32
PEER = "host-a-123-0badf00d"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def verifier_for(signer: GrantSigner, clock: FakeClock) -> GrantVerifier:
    v = GrantVerifier(clock)
    v.trust(decode_public_key(signer.public_text))
    return v


def test_a_grant_opens_its_task_until_it_expires(clock: FakeClock) -> None:
    signer = GrantSigner(clock, ttl=600)
    token, expires = signer.issue(TID, PEER)
    assert expires == int(clock.now()) + 600
    v = verifier_for(signer, clock)
    g = v.check(token, TID)
    assert (g.task_id, g.peer_id, g.expires) == (TID, PEER, expires)
    clock.advance(599)
    v.check(token, TID)
    clock.advance(1)
    with pytest.raises(GrantError, match="expired"):
        v.check(token, TID)  # also when the signature was verified (and remembered) before


def test_another_tasks_grant_is_refused(clock: FakeClock) -> None:
    signer = GrantSigner(clock)
    token, _ = signer.issue(OTHER, PEER)
    with pytest.raises(GrantError, match="another task"):
        verifier_for(signer, clock).check(token, TID)


def test_no_grant_or_an_unknown_key_is_refused(clock: FakeClock) -> None:
    signer = GrantSigner(clock)
    token, _ = signer.issue(TID, PEER)
    with pytest.raises(GrantError, match="private"):
        verifier_for(signer, clock).check(None, TID)
    stranger = GrantVerifier(clock)
    assert not stranger.knows_keys
    with pytest.raises(GrantError, match="does not know"):
        stranger.check(token, TID)
    # a grant by another supernode (a key of its own) is not one of ours
    with pytest.raises(GrantError, match="does not know"):
        verifier_for(signer, clock).check(GrantSigner(clock).issue(TID, PEER)[0], TID)


def test_forged_grants_are_refused(clock: FakeClock) -> None:
    signer = GrantSigner(clock)
    token, _ = signer.issue(TID, PEER)
    v = verifier_for(signer, clock)
    body, sig = token.split(".")
    payload = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    # move the expiry a year on, keep the signature: refused
    payload[3 + 8 + 32 : 3 + 8 + 32 + 8] = (int(clock.now()) + 365 * 86400).to_bytes(8, "big")
    longer = base64.urlsafe_b64encode(bytes(payload)).rstrip(b"=").decode() + "." + sig
    with pytest.raises(GrantError, match="signature"):
        v.check(longer, TID)
    # flip one bit of the signature: refused
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 1
    bad_sig = body + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(GrantError, match="signature"):
        v.check(bad_sig, TID)


@pytest.mark.parametrize(
    "token",
    ["", "x", "a.b", "." * 600, "é.é", "AAAA.AAAA", "!!!.???", "DG1" * 100 + "." + "A" * 86],
)
def test_malformed_grants_are_refused_without_raising_anything_else(
    clock: FakeClock, token: str
) -> None:
    v = verifier_for(GrantSigner(clock), clock)
    with pytest.raises(GrantError):
        v.check(token, TID)


def test_parse_reads_back_what_was_issued(clock: FakeClock) -> None:
    signer = GrantSigner(clock, ttl=30)
    token, expires = signer.issue(TID, PEER)
    g, _, sig = parse(token)
    assert (g.task_id, g.peer_id, g.expires, g.key_id) == (TID, PEER, expires, signer.key_id)
    assert len(sig) == 64


def test_renewal_is_due_past_half_life(clock: FakeClock) -> None:
    signer = GrantSigner(clock, ttl=600)
    _, expires = signer.issue(TID, PEER)
    clock.advance(299)
    assert not signer.renew_due(expires)
    clock.advance(2)
    assert signer.renew_due(expires)


def test_a_verifier_keeps_the_newest_keys(clock: FakeClock) -> None:
    signers = [GrantSigner(clock) for _ in range(3)]
    v = GrantVerifier(clock, max_keys=2)
    tokens = [s.issue(TID, PEER)[0] for s in signers]
    for s in signers:
        v.trust(s.public)
    with pytest.raises(GrantError, match="does not know"):
        v.check(tokens[0], TID)  # the oldest key was dropped
    v.check(tokens[1], TID)
    v.check(tokens[2], TID)


def test_public_keys_are_validated() -> None:
    for bad in ("", "not base64 !", "A" * 65, base64.urlsafe_b64encode(b"short").decode()):
        with pytest.raises(GrantError):
            decode_public_key(bad)


def test_a_signer_refuses_invalid_ids(clock: FakeClock) -> None:
    signer = GrantSigner(clock)
    with pytest.raises(ValueError):
        signer.issue("nothex", PEER)
    with pytest.raises(ValueError):
        signer.issue(TID, "bad peer id")
