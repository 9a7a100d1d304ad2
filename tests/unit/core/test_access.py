"""Private content, the pure part (core/access.py): credential headers and the check cache."""

from __future__ import annotations

import pytest

from damselfly.core.access import (
    CheckCache,
    CheckResult,
    check_key,
    credential_headers,
    is_credential,
    is_private,
)
from damselfly.core.clock import FakeClock


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        ("Authorization", True),
        ("authorization", True),
        ("Cookie", True),
        ("Proxy-Authorization", True),
        ("X-Auth-Token", True),
        ("X-API-KEY", True),
        ("Private-Token", True),
        ("X-Amz-Security-Token", True),
        ("X-Session-Id", True),
        ("X-Client-Secret", True),
        ("WWW-Authenticate", True),  # contains "auth": better one check too many
        ("Accept", False),
        ("User-Agent", False),
        ("Range", False),
        ("X-Request-Id", False),
        ("Accept-Encoding", False),
        ("Keep-Alive", False),
        ("If-None-Match", False),
    ],
)
def test_credential_names(name: str, credential: bool) -> None:
    assert is_credential(name) is credential
    assert is_private({name: "v"}) is credential


def test_no_headers_is_public_and_credentials_are_picked_out() -> None:
    assert not is_private({})
    hdrs = {"Accept": "*/*", "Authorization": "Bearer x", "X-Api-Key": "k"}
    assert credential_headers(hdrs) == {"Authorization": "Bearer x", "X-Api-Key": "k"}


def test_check_key_depends_on_url_and_credentials_only() -> None:
    s = b"k" * 32
    base = check_key(s, "http://o/f", {"Authorization": "Bearer a", "Accept": "x"})
    # case and order of names, and non-credential headers, do not matter
    assert base == check_key(s, "http://o/f", {"authorization": "Bearer a"})
    assert base != check_key(s, "http://o/f", {"Authorization": "Bearer b"})
    assert base != check_key(s, "http://o/g", {"Authorization": "Bearer a"})
    assert base != check_key(s, "http://o/f", {})
    assert base != check_key(b"j" * 32, "http://o/f", {"Authorization": "Bearer a"})
    # length prefixes: moving bytes between the URL and a value changes the key
    assert check_key(s, "ab", {"x-token": "c"}) != check_key(s, "a", {"x-token": "bc"})
    # the key holds no trace of the secret value
    assert b"Bearer" not in base and len(base) == 32


def test_cache_entries_expire_with_the_clock() -> None:
    clock = FakeClock()
    cache = CheckCache(clock, ttl=60)
    k = cache.key("http://o/f", {"Authorization": "t"})
    assert cache.get(k) is None
    cache.put(k, CheckResult(True, 206))
    clock.advance(59.9)
    assert cache.get(k) == CheckResult(True, 206)
    clock.advance(0.1)
    assert cache.get(k) is None
    assert len(cache) == 0


def test_cache_keys_use_a_per_process_secret() -> None:
    a, b = CheckCache(FakeClock()), CheckCache(FakeClock())
    hdrs = {"Authorization": "t"}
    assert a.key("http://o/f", hdrs) != b.key("http://o/f", hdrs)


def test_cache_is_bounded_oldest_first() -> None:
    clock = FakeClock()
    cache = CheckCache(clock, ttl=60, limit=3)
    keys = [cache.key(f"http://o/{i}", {}) for i in range(4)]
    for k in keys:
        cache.put(k, CheckResult(False, 403))
    assert len(cache) == 3
    assert cache.get(keys[0]) is None
    assert cache.get(keys[3]) == CheckResult(False, 403)
    # a refreshed entry moves to the back
    cache.put(keys[1], CheckResult(True, 200))
    cache.put(cache.key("http://o/new", {}), CheckResult(True, 200))
    assert cache.get(keys[1]) == CheckResult(True, 200)
    assert cache.get(keys[2]) is None
