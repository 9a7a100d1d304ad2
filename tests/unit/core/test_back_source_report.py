"""The back-source report a peer sends its supernode (core/protocol.py): v1 reason codes map
to a bounded set of names, an unknown name is kept as "other" (a metric label never takes a
peer's free text), malformed reports are refused."""

from __future__ import annotations

import pytest

from damselfly.core.errors import (
    REASON_NO_SUPERNODE,
    REASON_REGISTER_FAIL,
    REASON_SOURCE_ERROR,
    REASON_USER_SOURCE,
    BadRequest,
)
from damselfly.core.protocol import (
    BACK_SOURCE_NAMES,
    BackSourceReport,
    back_source_reason,
)

PEER = "host-1-abcdef01"


def test_codes_map_to_names() -> None:
    assert back_source_reason(REASON_REGISTER_FAIL) == "register_fail"
    assert back_source_reason(REASON_SOURCE_ERROR) == "source_error"
    assert back_source_reason(REASON_NO_SUPERNODE) == "no_supernode"
    assert back_source_reason(REASON_USER_SOURCE) == "user_source"
    assert back_source_reason(0) == back_source_reason(999) == "other"
    assert len(set(BACK_SOURCE_NAMES)) == len(BACK_SOURCE_NAMES) == 8


@pytest.mark.parametrize("name", BACK_SOURCE_NAMES)
def test_known_names_round_trip(name: str) -> None:
    rep = BackSourceReport(PEER, name)
    assert BackSourceReport.from_json(rep.to_json()) == rep


@pytest.mark.parametrize("reason", ["", "Register_Fail", "http://h/f?token=x", "a" * 64, None])
def test_unknown_reasons_are_other(reason: str | None) -> None:
    assert BackSourceReport.from_json({"peer_id": PEER, "reason": reason}).reason == "other"
    assert BackSourceReport.from_json({"peer_id": PEER}).reason == "other"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"peer_id": "../etc", "reason": "no_space"},
        {"peer_id": PEER, "reason": "x" * 65},
        {"peer_id": PEER, "reason": 3},
        {"peer_id": PEER, "reason": ["no_space"]},
    ],
)
def test_malformed_reports_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        BackSourceReport.from_json(body)
