"""Rules, as a table: route decisions, hijack decisions, mirror URLs, and config errors."""

from __future__ import annotations

import pytest

from damselfly.core.errors import ConfigError
from damselfly.dfdaemon.rules import DEFAULT_REMOTE, parse_rules

BLOB = "http://reg:5000/v2/lib/app/blobs/sha256:" + "a" * 64
MANIFEST = "http://reg:5000/v2/lib/app/manifests/latest"


def rules(*proxies: dict[str, object], mirror=None, hijack=None):  # type: ignore[no-untyped-def]
    return parse_rules(list(proxies), mirror or {}, hijack or {})


@pytest.mark.parametrize(
    ("proxies", "method", "url", "has_range", "kind", "out"),
    [
        ([{"regx": "blobs/sha256.*"}], "GET", BLOB, False, "swarm", BLOB),
        ([{"regx": "blobs/sha256.*"}], "HEAD", BLOB, False, "direct", BLOB),
        ([{"regx": "blobs/sha256.*"}], "GET", BLOB, True, "direct", BLOB),
        ([{"regx": "blobs/sha256.*"}], "GET", MANIFEST, False, "direct", MANIFEST),
        # first match wins
        (
            [{"regx": "lib/app", "direct": True}, {"regx": "blobs"}],
            "GET",
            BLOB,
            False,
            "direct",
            BLOB,
        ),
        (
            [{"regx": "blobs"}, {"regx": "lib/app", "direct": True}],
            "GET",
            BLOB,
            False,
            "swarm",
            BLOB,
        ),
        (
            [{"regx": "blobs", "use_https": True}],
            "GET",
            BLOB,
            False,
            "swarm",
            BLOB.replace("http://", "https://"),
        ),
        (
            [{"regx": "blobs", "redirect": "cache.local:8080"}],
            "GET",
            BLOB,
            False,
            "swarm",
            BLOB.replace("reg:5000", "cache.local:8080"),
        ),
        ([], "GET", BLOB, False, "direct", BLOB),
    ],
)
def test_route(proxies, method, url, has_range, kind, out) -> None:  # type: ignore[no-untyped-def]
    r = rules(*proxies).route(method, url, has_range)
    assert (r.kind, r.url) == (kind, out)


def test_mirror_url_drops_containerd_ns_and_keeps_other_query() -> None:
    r = rules(mirror={"remote": "https://registry.example:5000/"})
    assert r.mirror_url("/v2/a/b/manifests/1?ns=docker.io") == (
        "https://registry.example:5000/v2/a/b/manifests/1"
    )
    assert r.mirror_url("/v2/a/tags/list?n=5&ns=x&last=b") == (
        "https://registry.example:5000/v2/a/tags/list?n=5&last=b"
    )
    assert rules().mirror.remote == DEFAULT_REMOTE


NS = {
    "remote": "https://default.example",
    "namespaces": {
        "docker.io": "https://registry-1.docker.io",
        "Reg.Local:5000": {"remote": "http://reg.local:5000", "insecure": True, "direct": True},
    },
}


@pytest.mark.parametrize(
    ("path_qs", "remote", "url"),
    [
        ("/v2/a/manifests/1?ns=docker.io", "https://registry-1.docker.io", "/v2/a/manifests/1"),
        ("/v2/a/blobs/sha256:x?ns=reg.local:5000", "http://reg.local:5000", "/v2/a/blobs/sha256:x"),
        ("/v2/a/tags/list?n=2&ns=docker.io", "https://registry-1.docker.io", "/v2/a/tags/list?n=2"),
        ("/v2/", "https://default.example", "/v2/"),  # no ns (Docker, skopeo): the default
        ("/v2/a/manifests/1?ns=docker.io&ns=reg.local:5000", "https://registry-1.docker.io", ""),
    ],
)
def test_namespaces_pick_the_remote_by_containerd_ns(path_qs, remote, url) -> None:  # type: ignore[no-untyped-def]
    got = rules(mirror=NS).mirror_target(path_qs)
    assert not isinstance(got, str)
    mirror, full = got
    assert mirror.remote == remote
    if url:
        assert full == remote + url


def test_namespace_settings_and_unknown_ns() -> None:
    r = rules(mirror=NS)
    got = r.mirror_target("/v2/a/manifests/1?ns=reg.local:5000")
    assert not isinstance(got, str) and got[0].insecure and got[0].direct
    assert r.mirror_target("/v2/a/manifests/1?ns=ghcr.io") == "ghcr.io"
    # without namespaces: v1, every ns goes to the one remote
    got = rules(mirror={"remote": "https://one.example"}).mirror_target("/v2/x?ns=ghcr.io")
    assert not isinstance(got, str) and got[1] == "https://one.example/v2/x"


def test_hijack_only_with_a_ca_and_a_matching_host() -> None:
    h = {"cert": "ca.crt", "key": "ca.key", "hosts": [{"regx": r"^good\.", "insecure": True}]}
    r = rules(hijack=h)
    hit = r.hijacked("good.example")
    assert hit is not None and hit.insecure
    assert r.hijacked("bad.example") is None
    assert rules().hijacked("good.example") is None


@pytest.mark.parametrize(
    ("proxies", "mirror", "hijack", "named"),
    [
        ([{"regx": "("}], {}, {}, "proxies[0].regx"),
        ([{"regx": "x", "use_http": True}], {}, {}, "'use_http'"),
        ([{"regx": "x", "direct": "yes"}], {}, {}, "proxies[0].direct"),
        ([{"regx": "x", "redirect": "a b"}], {}, {}, "proxies[0].redirect"),
        ([{}], {}, {}, "proxies[0].regx"),
        ([], {"remote": "ftp://x"}, {}, "registry_mirror.remote"),
        ([], {"remote": "https://x/path"}, {}, "registry_mirror.remote"),
        ([], {"remote": "https://x", "mirrors": 1}, {}, "'mirrors'"),
        ([], {"certs": "ca.pem"}, {}, "registry_mirror.certs"),
        ([], {"namespaces": ["docker.io"]}, {}, "registry_mirror.namespaces"),
        ([], {"namespaces": {"a b": "https://x"}}, {}, "'a b'"),
        ([], {"namespaces": {"ghcr.io": {}}}, {}, "registry_mirror.namespaces.ghcr.io"),
        ([], {"namespaces": {"ghcr.io": "ftp://x"}}, {}, "registry_mirror.namespaces.ghcr.io"),
        (
            [],
            {"namespaces": {"ghcr.io": {"remote": "https://x", "insecur": True}}},
            {},
            "'insecur' in 'registry_mirror.namespaces.ghcr.io'",
        ),
        ([], {}, {"hosts": [{"regx": ".*"}]}, "'cert' and 'key'"),
        ([], {}, {"cert": "a", "key": "b", "hosts": [{"regx": ".*", "x": 1}]}, "'x'"),
    ],
)
def test_bad_rules_name_the_key(proxies, mirror, hijack, named) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        parse_rules(proxies, mirror, hijack, "dfdaemon.yml")
    assert named in str(e.value)
