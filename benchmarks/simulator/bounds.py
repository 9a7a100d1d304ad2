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
