"""Private content, the pure part (core/access.py): credential headers, access scopes and the
check cache."""

from __future__ import annotations

import pytest

from damselfly.core.access import (
    CheckCache,
    CheckResult,
    access_scope,
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


D = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        # registry blobs and manifests: one scope per (scheme, host, port, repository)
        (f"http://reg:5000/v2/private/a/blobs/{D}", ("http", "reg", "5000", "private/a")),
        (f"http://reg:5000/v2/private/a/blobs/{D2}", ("http", "reg", "5000", "private/a")),
        (f"http://reg:5000/v2/private/a/manifests/{D}", ("http", "reg", "5000", "private/a")),
        ("http://reg:5000/v2/private/a/manifests/v1.2-rc_3", ("http", "reg", "5000", "private/a")),
        (f"http://REG:5000/v2/private/a/blobs/{D}", ("http", "reg", "5000", "private/a")),
        (f"HTTPS://reg/v2/library/ubuntu/blobs/{D}", ("https", "reg", "443", "library/ubuntu")),
        (f"https://reg:443/v2/library/ubuntu/blobs/{D}", ("https", "reg", "443", "library/ubuntu")),
        (f"http://reg/v2/ubuntu/blobs/{D}", ("http", "reg", "80", "ubuntu")),
        (f"http://[::1]:5000/v2/a/blobs/{D}", ("http", "::1", "5000", "a")),
        # nested names and every separator of the grammar
        (f"http://r/v2/a/b/c/d/blobs/{D}", ("http", "r", "80", "a/b/c/d")),
        (
            f"http://r/v2/my.org/team__x/app--y_z/blobs/{D}",
            ("http", "r", "80", "my.org/team__x/app--y_z"),
        ),
        (f"http://r/v2/a/blobs/sha512:{'e' * 128}", ("http", "r", "80", "a")),
        (
            "http://r/v2/a/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            ("http", "r", "80", "a"),
        ),
    ],
)
def test_registry_urls_are_scoped_by_repository(url: str, scope: tuple[str, ...]) -> None:
    assert access_scope(url) == ("repository", *scope)


@pytest.mark.parametrize(
    "url",
    [
        # not the distribution API's shape
        "http://origin/f.bin",
        "http://r/v2/",
        "http://r/v2/a/tags/list",
        "http://r/v2/a/blobs/uploads/",
        f"http://r/v2/a/blobs/uploads/{D}",
        "http://r/v2/a/blobs/deadbeef",  # a blob is named by a digest
        f"http://r/v1/a/blobs/{D}",
        f"http://r/prefix/v2/a/blobs/{D}",
        f"http://r/v2/a/blobs/{D}/",
        f"http://r/v2/blobs/{D}",  # no name
        # odd names: anything the registry's router might read another way keeps its URL
        f"http://r/v2/a/../b/blobs/{D}",
        f"http://r/v2/../b/blobs/{D}",
        f"http://r/v2/a/./b/blobs/{D}",
        f"http://r/v2/a//b/blobs/{D}",
        f"http://r/v2//a/blobs/{D}",
        f"http://r/v2/A/blobs/{D}",
        f"http://r/v2/a%2fb/blobs/{D}",
        f"http://r/v2/a%2e%2e/blobs/{D}",
        f"http://r/v2/a-/blobs/{D}",
        f"http://r/v2/.a/blobs/{D}",
        f"http://r/v2/a___b/blobs/{D}",
        f"http://r/v2/a/blobs/b/blobs/{D}",  # a route word inside the name
        f"http://r/v2/a/manifests/b/blobs/{D}",
        f"http://r/v2/{'a' * 256}/blobs/{D}",
        "http://r/v2/a/manifests/.tag",
        f"http://r/v2/a/manifests/{'t' * 129}",
        # queries, fragments, user info, odd bytes, other schemes, bad ports
        f"http://r/v2/a/blobs/{D}?ns=docker.io",
        f"http://r/v2/a/blobs/{D}?",
        f"http://r/v2/a/blobs/{D}#x",
        f"http://u:p@r/v2/a/blobs/{D}",
        f"http://@r/v2/a/blobs/{D}",
        f"http://r/v2/a\tb/blobs/{D}",
        f"http://r/v2/a/b\n/blobs/{D}",
        f" http://r/v2/a/blobs/{D}",
        f"http://r/v2/\u00e4/blobs/{D}",
        f"ftp://r/v2/a/blobs/{D}",
        f"http://r:99999/v2/a/blobs/{D}",
        f"http://r:x/v2/a/blobs/{D}",
        f"http:///v2/a/blobs/{D}",
        "not a url",
        "",
    ],
)
def test_anything_else_keeps_its_exact_url(url: str) -> None:
    assert access_scope(url) == ("url", url)


def test_check_key_follows_the_scope() -> None:
    s, tok = b"k" * 32, {"Authorization": "Bearer a"}
    blob = check_key(s, f"http://r:5000/v2/p/a/blobs/{D}", tok)
    # another blob, a manifest, the host's case: same repository, same credential, same key
    assert blob == check_key(s, f"http://r:5000/v2/p/a/blobs/{D2}", tok)
    assert blob == check_key(s, "http://R:5000/v2/p/a/manifests/latest", tok)
    # another repository, port, scheme, host or credential: another key
    assert blob != check_key(s, f"http://r:5000/v2/p/b/blobs/{D}", tok)
    assert blob != check_key(s, f"http://r:5000/v2/p/a/x/blobs/{D}", tok)
    assert blob != check_key(s, f"http://r:5001/v2/p/a/blobs/{D}", tok)
    assert blob != check_key(s, f"https://r:5000/v2/p/a/blobs/{D}", tok)
    assert blob != check_key(s, f"http://q:5000/v2/p/a/blobs/{D}", tok)
    assert blob != check_key(s, f"http://r:5000/v2/p/a/blobs/{D}", {"Authorization": "Bearer b"})
    assert blob != check_key(s, f"http://r:5000/v2/p/a/blobs/{D}", {})
    # the same blob with a query is checked on its own
    assert blob != check_key(s, f"http://r:5000/v2/p/a/blobs/{D}?x=1", tok)
    # a full-URL scope never meets a repository scope (the kind is part of the key)
    assert check_key(s, "repository", {}) != check_key(s, "url", {})
