"""Property tests for every parser that reads outside input: whatever the text, each one answers
a value or raises its documented error (ConfigError for config and flags, BadRequest for what
comes from the network) — never an unexpected exception, which would surface as a 500 or a
traceback.

The examples that once broke a parser are pinned with ``@example`` so they stay fixed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from damselfly.core.errors import BadRequest, ConfigError
from damselfly.core.ids import (
    MAX_URL_LEN,
    filter_url,
    parse_filter,
    redact_url,
    sha256_in_url,
    task_id,
    validate_md5,
    validate_peer_id,
    validate_task_id,
    validate_url,
)
from damselfly.core.nodes import parse_node, parse_nodes, rendezvous_order
from damselfly.core.protocol import (
    PieceAssignment,
    PieceResult,
    RegisterRequest,
    RegisterResponse,
    ScheduleRequest,
    ScheduleResponse,
    loads_bounded,
)
from damselfly.core.units import parse_duration, parse_rate, parse_size
from damselfly.dfdaemon.cli import parse_daemon_config
from damselfly.dfget.options import parse_file_config
from damselfly.supernode.cdn_policy import parse_content_length, parse_content_range
from damselfly.supernode.config import SupernodeConfig, load_yaml
from damselfly.supernode.preheat import PreheatRequest, parse_image_url

# Characters that matter to these parsers, mixed with arbitrary unicode (superscript digits,
# full-width letters, NFKC traps such as U+FF03 '＃').
_SPECIAL = "0123456789.:/?#[]@=&%-_+ \t\r\n\x00KMGTiBbmshd²١\uff03\uff0f"
text = st.one_of(st.text(max_size=64), st.text(alphabet=_SPECIAL, max_size=40))
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False), text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


# ---- units -------------------------------------------------------------------------------


@given(st.one_of(text, numbers))
@example(float("inf"))
@example(float("nan"))
@example(1e300)
def test_parse_size_answers_a_non_negative_int_or_config_error(value: Any) -> None:
    try:
        n = parse_size(value)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(n, int) and n >= 0


@given(st.one_of(st.none(), text, numbers))
@example(float("inf"))
def test_parse_rate_answers_positive_or_none(value: Any) -> None:
    try:
        n = parse_rate(value)
    except ConfigError:
        return
    assert n is None or (isinstance(n, int) and n > 0)


@given(st.one_of(text, numbers))
@example(float("nan"))
@example("nan")
@example("inf")
@example("1e999")
def test_parse_duration_answers_finite_non_negative_seconds(value: Any) -> None:
    try:
        s = parse_duration(value)
    except ConfigError:
        return
    assert isinstance(s, float) and math.isfinite(s) and s >= 0


@given(st.integers(0, 10**6), st.sampled_from(["", "K", "M", "G", "KB", "MiB", "g"]))
def test_parse_size_round_trips_written_sizes(n: int, unit: str) -> None:
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit[:1].upper()]
    assert parse_size(f"{n}{unit}") == n * mult


# ---- ids: URLs, filters, task ids, digests -------------------------------------------------

http_urls = st.builds(
    lambda scheme, host, path, query: f"{scheme}://{host}/{path}" + (f"?{query}" if query else ""),
    st.sampled_from(["http", "https"]),
    st.from_regex(r"\A[a-z0-9.-]{1,20}(:[0-9]{1,5})?\Z"),
    st.text(alphabet=st.characters(blacklist_characters="\r\n\x00 #?"), max_size=40),
    st.text(alphabet=st.characters(blacklist_characters="\r\n\x00 #"), max_size=40),
)


@given(st.one_of(text, http_urls, st.builds(lambda t: "http://" + t, text)))
@example("http://[::1")
@example("http://h\uff03x/")
@example("http://h\uff0fx/")
@example("http://[v1.x]/")
@example("http://h:99999/")
def test_validate_url_accepts_or_raises_bad_request(url: str) -> None:
    try:
        out = validate_url(url)
    except BadRequest as e:
        assert str(e)
        return
    assert out == url and len(url) <= MAX_URL_LEN
    assert url.startswith(("http://", "https://"))
    # every later step of a registration works on an accepted URL
    keys = parse_filter("a&b&Signature")
    filtered = filter_url(url, keys)
    assert isinstance(filtered, str)
    assert len(task_id(url, keys, "", "id", "bytes=0-1")) == 64
    redacted = urlsplit(redact_url(url))
    if redacted.query:  # every query value hidden (signed URLs carry secrets there)
        assert all(item.endswith("=…") for item in redacted.query.split("&"))
        assert not redacted.fragment
    digest = sha256_in_url(url)
    assert digest is None or len(digest) == 64


@given(st.one_of(st.none(), text, st.lists(text, max_size=5)))
def test_parse_filter_gives_non_empty_keys_without_ampersands(spec: Any) -> None:
    keys = parse_filter(spec)
    assert all(k and "&" not in k for k in keys)


@given(http_urls, st.lists(st.text(min_size=1, max_size=8), max_size=4))
def test_filter_url_is_idempotent(url: str, keys: list[str]) -> None:
    once = filter_url(url, keys)
    assert filter_url(once, keys) == once


@given(st.binary(min_size=32, max_size=32), st.text(max_size=20))
def test_sha256_in_blob_urls_is_found(raw: bytes, prefix: str) -> None:
    hexd = (raw * 2).hex()[:64]
    assert sha256_in_url(f"http://r/v2/x/blobs/sha256:{hexd}") == hexd


@given(text)
def test_id_validators_raise_bad_request_only(value: str) -> None:
    for validate in (validate_task_id, validate_peer_id, validate_md5):
        try:
            validate(value)
        except BadRequest:
            pass


# ---- nodes ---------------------------------------------------------------------------------


@given(st.one_of(text, st.lists(text, max_size=4)))
@example("[::1")
@example("h:²")
@example("h=١")
@example("[::1]:0")
def test_parse_nodes_answers_valid_nodes_or_config_error(spec: Any) -> None:
    try:
        nodes = parse_nodes(spec)
    except ConfigError:
        return
    for n in nodes:
        assert n.host and 0 < n.port < 65536 and 1 <= n.weight <= 1000
        assert parse_node(f"{n.addr}={n.weight}") == n or ":" in n.host
    order = rendezvous_order("0" * 64, nodes)
    assert sorted(order, key=repr) == sorted(nodes, key=repr)


# ---- protocol messages ---------------------------------------------------------------------


@given(st.one_of(st.binary(max_size=200), text.map(str.encode)))
@example(b"[" * 100_000)
@example(b'{"a":' * 50_000)
@example(b"\xff\xfe")
def test_loads_bounded_answers_a_dict_or_bad_request(body: bytes) -> None:
    try:
        obj = loads_bounded(body)
    except BadRequest:
        return
    assert isinstance(obj, dict)


_FIELDS = [
    "url", "peer", "filter", "md5", "identifier", "headers", "pattern", "callsystem",
    "peer_id", "results", "want", "wait_ms", "task_id", "length", "piece_size",
    "piece_count", "status", "pieces", "retry_ms", "message", "piece", "ok", "source",
    "failure", "bytes", "digest", "num", "start", "size", "type",
]  # fmt: skip
messages = st.dictionaries(st.sampled_from(_FIELDS), json_values, max_size=8)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages)
@example({"url": "http://h/", "peer": {"id": "p", "ip": "", "port": 1}, "headers": {"": "x"}})
@example({"url": "http://h/", "peer": {"id": "p", "port": 1}, "filter": ["a"], "headers": []})
@example({"peer_id": "p", "results": [{"ok": True, "source": "x", "piece": 1.5}]})
def test_message_parsers_answer_or_raise_bad_request(obj: dict[str, Any]) -> None:
    for parse in (
        RegisterRequest.from_json,
        RegisterResponse.from_json,
        ScheduleRequest.from_json,
        ScheduleResponse.from_json,
        PieceResult.from_json,
        PieceAssignment.from_json,
        PreheatRequest.from_json,
    ):
        try:
            parse(obj)
        except BadRequest as e:
            assert str(e)


@given(messages)
def test_register_request_survives_its_own_json(obj: dict[str, Any]) -> None:
    try:
        req = RegisterRequest.from_json(obj)
    except BadRequest:
        return
    again = RegisterRequest.from_json(json.loads(json.dumps(req.to_json())))
    assert again == req


@given(st.one_of(text, http_urls))
def test_parse_image_url_raises_bad_request_only(url: str) -> None:
    try:
        ref = parse_image_url(url)
    except BadRequest:
        return
    assert ref.repo and ref.reference


# ---- Range / Content-Range / Content-Length from an origin --------------------------------


@given(st.one_of(st.none(), text, st.from_regex(r"\Abytes \d{1,20}-\d{1,20}/\d{1,20}\Z")))
def test_parse_content_range_is_consistent(value: str | None) -> None:
    got = parse_content_range(value)
    if got is not None:
        a, b, total = got
        assert 0 <= a <= b < total


@given(st.one_of(st.none(), text))
@example("²")
@example("١٢")
def test_parse_content_length_is_none_or_non_negative(value: str | None) -> None:
    n = parse_content_length(value)
    assert n is None or n >= 0


# ---- YAML config files ---------------------------------------------------------------------

yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_DAEMON_KEYS = [
    "port", "node", "supernodes", "dfget_flags", "ratelimit", "localrepo", "verbose",
    "registry_mirror", "proxies", "hijack_https", "other",
]  # fmt: skip
_DFGET_KEYS = ["nodes", "localLimit", "minRate", "totalLimit", "workHome", "other"]
_SUPERNODE_KEYS = [
    "listenPort", "downloadPort", "homeDir", "advertiseIP", "maxBandwidth",
    "systemReservedBandwidth", "peerUpLimit", "peerDownLimit", "taskExpireTime",
    "peerGCDelay", "cdnPattern", "debug", "linkLimit", "other",
]  # fmt: skip
raw_yaml = st.one_of(
    text,
    st.sampled_from(["[", "{a: [", "a: &x [*x]", "? [a]\n: 1", "!!python/object:os.system x"]),
)


@given(st.one_of(yaml_values, st.dictionaries(st.sampled_from(_DAEMON_KEYS), yaml_values)))
@example({"port": float("inf")})
@example({"ratelimit": float("inf")})
@example({"port": "²"})
def test_dfdaemon_config_answers_or_raises_config_error(obj: Any) -> None:
    try:
        parse_daemon_config(obj)
    except ConfigError as e:
        assert str(e)


@given(st.one_of(raw_yaml, st.dictionaries(st.sampled_from(_DFGET_KEYS), yaml_values)))
@example({"localLimit": float("inf")})
@example({"minRate": ".nan"})
def test_dfget_config_answers_or_raises_config_error(obj: Any) -> None:
    doc = obj if isinstance(obj, str) else yaml.safe_dump(obj)
    try:
        parse_file_config(doc)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        raw_yaml,
        st.dictionaries(
            st.sampled_from(["base", "plugins", "other"]),
            st.one_of(yaml_values, st.dictionaries(st.sampled_from(_SUPERNODE_KEYS), yaml_values)),
        ),
    )
)
@example({"base": {"listenPort": float("inf")}})
@example({"base": {"peerUpLimit": float("nan")}})
@example({"base": {"maxBandwidth": float("inf")}})
@example({"base": {"peerGCDelay": float("nan")}})
@example({"base": {"homeDir": ["a"]}})
def test_supernode_config_answers_or_raises_config_error(tmp_path: Path, obj: Any) -> None:
    f = tmp_path / "supernode.yml"
    f.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    try:
        load_yaml(f, SupernodeConfig())
    except ConfigError as e:
        assert str(e)
