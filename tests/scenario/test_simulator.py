"""The scale simulator (benchmarks/simulator) on small swarms: it runs the real scheduler to the
end, its figures are sane against the floor, and a seed makes a run repeatable."""

from __future__ import annotations

import pytest
from benchmarks.simulator.bounds import t_min, t_piece, t_tree
from benchmarks.simulator.fluid import Network
from benchmarks.simulator.swarm import Setup, Simulation, simulate

from damselfly.scheduler import SchedulerConfig

MB = 1_000_000


@pytest.mark.parametrize(
    ("uploads", "downloads", "expected"),
    [
        # sender up 80 bit/s shared by its uploads; receivers' down 40 bit/s shared by theirs
        (1, 1, 40 / 8),  # the receiver's link binds
        (2, 1, 40 / 8),  # 80/2 = 40 each: both links full
        (4, 1, 20 / 8),  # the sender's link binds
        (1, 2, 20 / 8),  # the receiver has a second download from elsewhere
    ],
)
def test_equal_share_per_link(uploads: int, downloads: int, expected: float) -> None:
    net = Network()
    net.add_node("s", 80, 1e9)
    net.add_node("o", 1e9, 1e9)
    xs = []
    for i in range(uploads):
        net.add_node(f"r{i}", 1e9, 40)
        xs.append(net.start("s", f"r{i}", 100, i, 0.0))
    for _ in range(downloads - 1):
        net.start("o", "r0", 1e6, "other", 0.0)
    assert xs[0].rate == pytest.approx(expected)


def test_rates_change_when_a_transfer_ends() -> None:
    net = Network()
    net.add_node("s", 16, 1e9)  # 2 bytes/s
    net.add_node("a", 1e9, 1e9)
    net.add_node("b", 1e9, 1e9)
    net.start("s", "a", 1, "a", 0.0)  # 1 byte at 1 byte/s while shared
    net.start("s", "b", 3, "b", 0.0)
    t, x = net.pop_done()
    assert (t, x.tag) == (pytest.approx(1.0), "a")
    t, x = net.pop_done()  # 2 bytes left, now alone at 2 bytes/s
    assert (t, x.tag) == (pytest.approx(2.0), "b")
    assert net.next_time() == float("inf") and net.nodes["s"].sent == 4


def test_floors() -> None:
    # the v1 setup: 200 MB at 200 Mbit/s is 8 s, whatever N, with a fast enough supernode
    assert t_min(200 * MB, 7000, 1e9, 200e6, 200e6) == pytest.approx(8.0)
    assert t_min(200 * MB, 10, 100e6, 200e6, 200e6) == pytest.approx(16.0)  # the supernode binds
    floors = [t_piece(200 * MB, 4 << 20, n, 1e9, 200e6, 200e6) for n in (10, 100, 1000, 10000)]
    assert floors == sorted(floors) and floors[0] >= 8.0  # whole pieces cost more as N grows
    trees = [t_tree(200 * MB, 4 << 20, n, 1e9, 200e6, 200e6) for n in (10, 100, 1000, 10000)]
    assert trees == sorted(trees)
    # the tree floor is the tighter one for the v1 setup, and smaller pieces lower it
    assert all(t >= f for t, f in zip(trees, floors, strict=True))
    assert t_tree(200 * MB, 1 << 20, 7000, 1e9, 200e6, 200e6) < t_tree(
        200 * MB, 4 << 20, 7000, 1e9, 200e6, 200e6
    )


@pytest.mark.parametrize(
    ("peers", "pieces", "expected"),
    [
        # Worked by hand, every link 8 bit/s, pieces of 1 byte (one piece time = 1 s): the
        # supernode sends piece 0 to A in [0, 1]; in [1, 2] it sends piece 1 to B while A
        # sends piece 0 to C; in [2, 3] every peer gets the piece it lacks. No schedule of
        # whole pieces is faster: 3 s, where the fluid floor T_min says 2 s.
        (3, 2, 3.0),
        (1, 4, 4.0),  # one peer: its own downlink, F/d
        # 7 peers, 1 piece: the holders at most double each second (1, 3, 7): 3 s is both
        # the floor and a schedule (supernode → A; supernode → B, A → C; then four more)
        (7, 1, 3.0),
    ],
)
def test_tree_floor_on_hand_worked_cases(peers: int, pieces: int, expected: float) -> None:
    got = t_tree(pieces, 1, peers, 8, 8, 8)
    assert got == pytest.approx(expected, abs=0.01)
    assert got >= t_min(pieces, peers, 8, 8, 8)


@pytest.mark.parametrize("peers", [1, 5, 40])
def test_every_peer_completes_near_the_floor(peers: int) -> None:
    st = simulate(Setup(peers=peers, size=40 * MB, seed=3))
    assert not st.stalled
    assert len(st.done_at) == peers
    assert max(st.done_at) == pytest.approx(st.makespan)
    assert st.t_min <= st.t_piece <= st.makespan * (1 + 1e-9) < 2.0 * st.t_min
    assert st.t_tree <= st.makespan * (1 + 1e-9)  # a floor: no run beats it (float sums)
    total = sum(st.bytes_by_source.values())
    assert total == peers * 40 * MB  # every byte of every peer, counted once
    assert st.bytes_by_source["supernode"] >= 40 * MB  # the supernode sent every piece
    if peers >= 5:
        assert st.peer_share > 0.5  # and peers carried most of the rest


def test_peers_carry_most_bytes_of_a_bigger_swarm() -> None:
    st = simulate(Setup(peers=60, size=40 * MB, seed=5))
    # the supernode seeds every piece, then only rescues peers left idle: a few files at most
    assert 1.0 <= st.supernode_share < 6
    assert st.peer_share > 0.9


def test_the_cdn_filling_at_origin_speed_paces_the_swarm() -> None:
    # The CDN gets the file at 100 Mbit/s (3.2 s): nobody can finish before the last piece.
    st = simulate(Setup(peers=20, size=40 * MB, cdn_rate=100e6, seed=2))
    assert not st.stalled and len(st.done_at) == 20
    assert st.makespan >= 40 * MB * 8 / 100e6


def test_rpc_delay_and_late_joiners_still_complete() -> None:
    st = simulate(Setup(peers=30, size=20 * MB, rpc_delay=0.02, join_spread=1.0, seed=4))
    assert not st.stalled and len(st.done_at) == 30


def test_a_seed_makes_a_run_repeatable() -> None:
    def run(seed: int) -> tuple[float, dict[str, int], int]:
        st = simulate(Setup(peers=30, size=20 * MB, seed=seed, join_spread=0.5))
        return st.makespan, st.bytes_by_source, st.schedule_calls

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_the_real_scheduler_stays_consistent() -> None:
    from benchmarks.simulator.swarm import Simulation

    sim = Simulation(Setup(peers=25, size=20 * MB, scheduler=SchedulerConfig(up_limit=3)))
    st = sim.run()
    assert not st.stalled
    sim.sched.audit()  # every derived counter recomputed from scratch
    assert all(e.done for e in sim.engines.values())


CLASSIC = SchedulerConfig(source_slow_start=False, download_slow_start=False, fresh_first_window=0)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_rampup_rules_shorten_a_crowds_distribution(seed: int) -> None:
    # 150 peers arriving together: with slow start and fresh peers first the holders double
    # every piece time instead of growing by waves, so everyone holds a piece sooner and
    # the last peer finishes sooner (simulated seconds, not wall-clock).
    def run(config: SchedulerConfig) -> tuple[float, float]:
        sim = Simulation(Setup(peers=150, size=40 * MB, seed=seed, scheduler=config), 0.05)
        st = sim.run()
        assert not st.stalled and st.t_tree <= st.makespan * (1 + 1e-9)
        sim.sched.audit()
        everyone_holds = next(t for t, holders, *_ in st.trace if holders == 150)
        return everyone_holds, st.makespan

    (ramp_new, end_new), (ramp_old, end_old) = run(SchedulerConfig()), run(CLASSIC)
    assert ramp_new < ramp_old
    assert end_new < end_old
