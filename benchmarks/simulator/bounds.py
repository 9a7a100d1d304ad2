"""Lower bounds on the makespan of distributing F bytes to N peers (no schedule beats them).

``t_min`` is Kumar & Ross's fluid floor: the supernode must send every byte once, the slowest
peer must receive F, and N·F bytes must cross the total upload capacity.

``t_piece`` adds what the fluid floor ignores: a peer serves only whole pieces it holds (the
engine verifies a piece before serving it), so at the start the upload capacity of the swarm
is only that of peers already holding a piece. With B(t) the bytes received by all peers and
P the piece size, at most B/P peers hold a whole piece, hence

    dB/dt ≤ min(N·d, u_s + u · min(N, B/P))

Integrating from B(0) = 0 until B = N·F gives a floor that holds for every scheduler that
moves whole pieces (it is still generous: it lets partly received pieces count). Homogeneous
peers (one upload rate u, one download rate d) are assumed.

``t_tree`` is the tighter floor the simulator reports. It bounds the number of holders H(t)
(peers holding at least one whole piece) by counting how fast whole pieces can spread, then
integrates the same capacity bound. The argument, for any schedule that sends each piece from
one source and serves only pieces it holds whole (Damselfly's rules):

* a transfer of a piece of P bytes into a peer takes at least P/min(u, d) (P/min(u_s, d) from
  the supernode);
* a peer that became a holder at time h sends its k-th whole piece no earlier than
  h + max(P/min(u, d), k·P/u): everything it sends leaves after h, at most u bytes/s; the
  supernode's k-th no earlier than max(P/min(u_s, d), k·P/u_s);
* so the peers made holders by one holder, recursively, are at most
  g(s) = 1 + Σ_k g(s − c_k) a time s after it became one (c_k the k-th child's earliest
  time; with u = d, g(s) = 2^⌊s·u/P⌋: the holders at most double every piece time), and
  H(t) ≤ min(N, Σ_k g(t − C_k)) over the supernode's children C_k.

With P the piece size, the rate at which bytes reach peers is at most min(N·d, u_s + u·H(t)).
A smaller last piece (P_last < P) spreads faster; two valid versions are computed and the
larger kept: every piece timed as P_last, or the tree timed with P for full pieces and the
last piece's N·P_last bytes taken out of what the supernode and full-piece holders must send
(peers holding only the last piece can send nothing else). Time is stepped on a grid of P/400
of a piece time, rounding every child's time down (the bound stays a bound).
"""

from __future__ import annotations

import math


def t_min(size: float, n: int, server_up: float, peer_up: float, peer_down: float) -> float:
    """max(F/u_s, F/d, N·F/(u_s + N·u)) in seconds; rates in bits/s, size in bytes."""
    f = size * 8
    return max(f / server_up, f / peer_down, n * f / (server_up + n * peer_up))


def t_piece(
    size: float, piece: float, n: int, server_up: float, peer_up: float, peer_down: float
) -> float:
    """The store-and-forward floor described in the module docstring (seconds)."""
    us, u, d = server_up / 8, peer_up / 8, peer_down / 8
    total = n * size
    # Phase 1: B grows as dB/dt = us + u·B/P until a cap binds: the peers' total download
    # rate (at B/P = (N·d − us)/u) or every peer holding a piece (B/P = N).
    level = min(float(n), max(0.0, (n * d - us) / u))
    b1 = min(total, piece * level)
    t1 = (piece / u) * math.log1p(u * b1 / (us * piece))
    if b1 >= total:
        return max(t1, t_min(size, n, server_up, peer_up, peer_down))
    # Phase 2: the rate is constant from then on (B only grows, so the cap keeps binding).
    rate = min(n * d, us + u * n)
    return max(t1 + (total - b1) / rate, t_min(size, n, server_up, peer_up, peer_down))


def t_tree(
    size: float, piece: float, n: int, server_up: float, peer_up: float, peer_down: float
) -> float:
    """The whole-piece tree floor described in the module docstring (seconds)."""
    floor = t_min(size, n, server_up, peer_up, peer_down)
    if size <= 0 or n < 1:
        return floor
    count = math.ceil(size / piece)
    last = size - (count - 1) * piece
    if last >= piece:
        return max(floor, _tree(size * n, piece, n, server_up, peer_up, peer_down))
    everything_small = _tree(size * n, last, n, server_up, peer_up, peer_down)
    full_pieces = _tree((size - last) * n, piece, n, server_up, peer_up, peer_down)
    return max(floor, everything_small, full_pieces)


def _tree(
    need: float, piece: float, n: int, server_up: float, peer_up: float, peer_down: float
) -> float:
    """Earliest time by which ``need`` bytes can have reached the peers, holders growing as a
    tree of whole ``piece``-byte transfers (see the module docstring)."""
    us, u, d = server_up / 8, peer_up / 8, peer_down / 8
    dt = piece / min(u, d) / 400
    # children's earliest times, in grid steps rounded down (a peer's, the supernode's)
    peer_kids = _child_steps(piece / min(u, d), piece / u, dt, n)
    sn_kids = _child_steps(piece / min(us, d), piece / us, dt, n)
    g: list[int] = []  # g[i] ≥ the subtree of a holder, for every s < (i + 1)·dt
    got, i = 0.0, 0
    while True:
        v = 1
        for o in peer_kids:
            if o > i or v >= n:
                break
            v += g[i - o]
        g.append(min(v, n))
        h = 0
        for o in sn_kids:
            if o > i or h >= n:
                break
            h += g[i - o]
        got += min(n * d, us + u * min(h, n)) * dt
        if got >= need:
            return i * dt  # the bytes cannot all have arrived before step i ends
        i += 1


def _child_steps(first: float, each: float, dt: float, n: int) -> list[int]:
    """Grid steps (rounded down) of the earliest k-th child, k = 1..n."""
    return [int(max(first, k * each) / dt) for k in range(1, n + 1)]
