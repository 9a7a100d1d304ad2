import hashlib

import pytest

from damselfly.core.errors import BadRequest
from damselfly.core.ids import (
    filter_url,
    parse_filter,
    redact_url,
    sha256_in_url,
    task_id,
    validate_url,
)


@pytest.mark.parametrize(
    ("url", "keys", "want"),
    [
        ("http://h/f?a=1&b=2", [], "http://h/f?a=1&b=2"),
        ("http://h/f?a=1&Signature=x&Expires=9", ["Signature", "Expires"], "http://h/f?a=1"),
        ("http://h/f?b=2&a=1&Signature=x", ["Signature"], "http://h/f?a=1&b=2"),
        ("http://h/f?Signature=x", ["Signature"], "http://h/f"),
    ],
)
def test_filter_url(url: str, keys: list[str], want: str) -> None:
    assert filter_url(url, keys) == want


def test_signed_urls_differing_only_in_filtered_keys_share_a_task() -> None:
    keys = parse_filter("Expires&OSSAccessKeyId&Signature")
    a = "https://b.oss/obj?Expires=1&OSSAccessKeyId=k&Signature=s1"
    b = "https://b.oss/obj?Expires=2&OSSAccessKeyId=k&Signature=s2"
    assert task_id(a, keys) == task_id(b, keys)
    assert task_id(a) != task_id(b)


def test_task_id_is_v1_sha256_of_url_plus_md5_or_identifier() -> None:
    url = "http://h/f"
    assert task_id(url) == hashlib.sha256(url.encode()).hexdigest()
    assert task_id(url, md5="ab" * 16) == hashlib.sha256((url + "ab" * 16).encode()).hexdigest()
    assert task_id(url, identifier="x") == hashlib.sha256(b"http://h/fx").hexdigest()
    # md5 wins over identifier, as in v1
    assert task_id(url, md5="ab" * 16, identifier="x") == task_id(url, md5="ab" * 16)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ftp://h/f",
        "file:///etc/passwd",
        "http:///nohost",
        "http://user:pw@h/f",
        "http://h/f\r\nX: y",
        "http://h:99999/f",
        "http://h/" + "a" * 9000,
    ],
)
def test_validate_url_rejects(bad: str) -> None:
    with pytest.raises(BadRequest):
        validate_url(bad)


def test_sha256_in_url() -> None:
    d = "a" * 64
    assert sha256_in_url(f"http://r/v2/x/blobs/sha256:{d}") == d
    assert sha256_in_url(f"http://r/v2/x/blobs/sha256:{d}?ns=docker.io") == d
    assert sha256_in_url("http://r/v2/x/manifests/latest") is None
    assert sha256_in_url(f"http://r/v2/x/blobs/sha256:{d}0") is None


def test_redact_url_hides_query_values() -> None:
    assert redact_url("http://h/f?Signature=secret&a=1") == "http://h/f?Signature=…&a=…"
    assert "secret" not in redact_url("http://h/f?Signature=secret")
    assert redact_url("http://h/f") == "http://h/f"
