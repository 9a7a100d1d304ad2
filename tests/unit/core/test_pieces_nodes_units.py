import pytest
from hypothesis import given
from hypothesis import strategies as st

from damselfly.core.errors import ConfigError
from damselfly.core.nodes import Node, parse_nodes, rendezvous_order
from damselfly.core.pieces import MiB, PiecePlan, piece_size_for, v1_piece_size
from damselfly.core.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("length", "v1", "size"),
    [
        (-1, 4 * MiB, 4 * MiB),  # unknown length: v1's default
        (0, 4 * MiB, 1 * MiB),
        (1, 4 * MiB, 1 * MiB),
        (100 * MiB, 4 * MiB, 1 * MiB),  # ~100 pieces, never under 1 MiB
        (100 * MiB + 1, 4 * MiB, 2 * MiB),
        (200_000_000, 4 * MiB, 2 * MiB),  # v1's published setup: 96 pieces
        (200 * MiB, 4 * MiB, 2 * MiB),
        (200 * MiB + 1, 4 * MiB, 3 * MiB),  # 200MiB+1 // 100MiB + 2 = 4 (v1)
        (300 * MiB, 5 * MiB, 3 * MiB),
        (1024 * MiB, 12 * MiB, 11 * MiB),
        (1300 * MiB, 15 * MiB, 13 * MiB),
        (1500 * MiB, 15 * MiB, 15 * MiB),  # from here on v1's size
        (10_000 * MiB, 15 * MiB, 15 * MiB),
    ],
)
def test_piece_size_is_v1s_at_most_and_about_a_hundred_pieces(
    length: int, v1: int, size: int
) -> None:
    assert v1_piece_size(length) == v1
    assert piece_size_for(length) == size


@given(st.integers(min_value=1, max_value=20 * 1024 * MiB))
def test_piece_plan_covers_the_file_exactly(length: int) -> None:
    plan = PiecePlan.for_length(length)
    assert sum(plan.size(i) for i in range(plan.count)) == length
    assert plan.range(plan.count - 1)[1] == length - 1
    assert all(plan.size(i) == plan.piece_size for i in range(plan.count - 1))


def test_piece_plan_bounds() -> None:
    plan = PiecePlan.for_length(10)
    with pytest.raises(IndexError):
        plan.size(1)
    assert PiecePlan.for_length(0).count == 0


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("a", [Node("a", 8002, 1)]),
        ("a:9000=3,b", [Node("a", 9000, 3), Node("b", 8002, 1)]),
        ("a,a", [Node("a", 8002, 1)]),
        ("[::1]:9000", [Node("::1", 9000, 1)]),
        ("", []),
    ],
)
def test_parse_nodes(spec: str, want: list[Node]) -> None:
    assert parse_nodes(spec) == want


@pytest.mark.parametrize("bad", ["a:x", "a:70000", "a=0", "a=x", ":80"])
def test_parse_nodes_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_nodes(bad)


def test_rendezvous_is_stable_and_moves_only_the_removed_nodes_tasks() -> None:
    nodes = parse_nodes("a,b,c,d")
    tasks = [f"{i:064x}" for i in range(400)]
    owner = {t: rendezvous_order(t, nodes)[0] for t in tasks}
    assert len(set(owner.values())) == 4  # spread over every node
    without_c = [n for n in nodes if n.host != "c"]
    for t in tasks:
        new_owner = rendezvous_order(t, without_c)[0]
        if owner[t].host != "c":
            assert new_owner == owner[t]
        else:  # the failover order is the old order without c
            assert new_owner == rendezvous_order(t, nodes)[1]


def test_rendezvous_weights() -> None:
    nodes = parse_nodes("a=3,b=1")
    tasks = [f"{i:064x}" for i in range(2000)]
    share_a = sum(rendezvous_order(t, nodes)[0].host == "a" for t in tasks) / len(tasks)
    assert 0.68 < share_a < 0.82


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("20M", 20 * MiB),
        ("512K", 512 * 1024),
        ("1G", 1024 * MiB),
        ("100", 100),
        ("1.5M", int(1.5 * MiB)),
        ("20MB", 20 * MiB),
    ],
)
def test_parse_size(text: str, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "0", "none", "off", None])
def test_parse_rate_unlimited(text: str | None) -> None:
    assert parse_rate(text) is None


@pytest.mark.parametrize("bad", ["fast", "-1M", "1X", "M"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "want"), [("3m", 180.0), ("1h30m", 5400.0), ("45", 45.0), ("500ms", 0.5), (10, 10.0)]
)
def test_parse_duration(text: str | int, want: float) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("bad", ["3x", "m", "1m3", "-5"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(bad)
