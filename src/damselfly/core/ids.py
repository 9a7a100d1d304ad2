"""Task identity, URL validation and the digests a URL may carry.

The task id follows Dragonfly v1: sha256 of the URL with the filtered query keys removed, plus the
user's md5 (or, without one, the identifier), plus the Range header. Other headers (auth tokens)
do not change it, so peers with different tokens share one task.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from damselfly.core.errors import BadRequest

MAX_URL_LEN = 8192
TASK_ID_RE = re.compile(r"^[0-9a-f]{64}$")
PEER_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SHA256_IN_URL = re.compile(r"sha256:([0-9a-f]{64})(?![0-9a-f])")
_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def validate_url(url: str) -> str:
    """Accept only absolute http(s) URLs of bounded length; raise BadRequest otherwise."""
    if not isinstance(url, str) or not url:
        raise BadRequest("missing url", "give an http(s) URL")
    if len(url) > MAX_URL_LEN:
        raise BadRequest(f"url longer than {MAX_URL_LEN} characters")
    if any(c in url for c in "\r\n\x00 "):
        raise BadRequest("url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as e:  # "Invalid IPv6 URL", netloc characters changed by NFKC
        raise BadRequest("url is malformed", "check the host part of the URL") from e
    if parts.scheme not in ("http", "https"):
        raise BadRequest(f"unsupported url scheme {parts.scheme!r}", "only http and https URLs")
    if not parts.hostname:
        raise BadRequest("url has no host")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise BadRequest("url has an invalid port") from e
    if parts.username or parts.password:
        # Credentials in a URL would travel into logs and task listings; headers are the way.
        raise BadRequest("url must not carry user:password", "pass credentials with --header")
    return url


def parse_filter(filter_spec: str | list[str] | None) -> list[str]:
    """v1's ``-f a&b&c`` (or a list) → ['a', 'b', 'c']."""
    if not filter_spec:
        return []
    items = filter_spec if isinstance(filter_spec, list) else [filter_spec]
    keys: list[str] = []
    for item in items:
        keys.extend(k for k in str(item).split("&") if k)
    return keys


def filter_url(url: str, filter_keys: list[str]) -> str:
    """Drop the query keys named in ``filter_keys``; the rest is kept, sorted by key as in v1."""
    if not filter_keys:
        return url
    parts = urlsplit(url)
    drop = set(filter_keys)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in drop]
    query.sort(key=lambda kv: kv[0])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def task_id(
    url: str,
    filter_keys: list[str] | None = None,
    md5: str = "",
    identifier: str = "",
    range_header: str = "",
) -> str:
    """The v1 task id: sha256(filtered URL + (md5 or identifier) + Range)."""
    h = hashlib.sha256(filter_url(url, filter_keys or []).encode())
    salt = md5 or identifier
    if salt:
        h.update(salt.encode())
    if range_header:
        h.update(range_header.encode())
    return h.hexdigest()


def sha256_in_url(url: str) -> str | None:
    """The hex sha256 an OCI blob URL names (``.../blobs/sha256:<hex>``), if any."""
    path = urlsplit(url).path
    m = _SHA256_IN_URL.search(path)
    return m.group(1) if m else None


def validate_md5(md5: str) -> str:
    if md5 and not _MD5_RE.match(md5):
        raise BadRequest(f"invalid md5 {md5!r}", "give 32 hexadecimal digits")
    return md5.lower()


def validate_task_id(tid: str) -> str:
    if not isinstance(tid, str) or not TASK_ID_RE.match(tid):
        raise BadRequest("invalid task id")
    return tid


def validate_peer_id(pid: str) -> str:
    if not isinstance(pid, str) or not PEER_ID_RE.match(pid):
        raise BadRequest("invalid peer id")
    return pid


def redact_url(url: str) -> str:
    """A URL fit for logs: query values are hidden (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(f"{k}=…" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
