"""A timed TCP transfer for checking link shaping: ``sink`` measures, ``send`` saturates.

    python -m benchmarks.swarm.probe sink --port P --warm 0.5 --measure 1.5
    python -m benchmarks.swarm.probe send --to IP:PORT --max-seconds 30
    python -m benchmarks.swarm.probe rtt --to IP:PORT [--count 7]

The sink accepts connections and, once the first byte has arrived, skips ``--warm`` seconds
(TCP slow start) and counts the payload bytes the kernel received on all of them over
``--measure`` seconds; then it prints one JSON line ``{"bits_per_s": …, "bytes": …,
"seconds": …}`` and closes the connections, which ends the senders. ``rtt`` times TCP handshakes to a listening port (one round trip each) and prints
``{"rtt_ms": median, "samples_ms": […]}``. Everything is bounded: a sink that sees no byte within ``--max-seconds`` fails, and so
does a sender that is still sending after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import struct
import time

CHUNK = 256 * 1024
TCPI_BYTES_RECEIVED = 128  # offset of the u64 tcpi_bytes_received in struct tcp_info


def tcp_bytes_received(sock: socket.socket) -> int:
    """Payload bytes the kernel has received on this connection (``tcpi_bytes_received``),
    counted when they arrive, not when this process reads them."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < TCPI_BYTES_RECEIVED + 8:
        raise SystemExit("probe sink: this kernel's TCP_INFO has no tcpi_bytes_received")
    return int(struct.unpack_from("=Q", info, TCPI_BYTES_RECEIVED)[0])


def sink(port: int, warm: float, measure: float, max_seconds: float) -> dict[str, float]:
    """Goodput over the window, from the kernel's per-connection byte counts sampled at its
    start and end: a reader that falls behind (a busy CPU) does not skew the figure."""
    sel = selectors.DefaultSelector()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", port))
    lst.listen(64)
    lst.setblocking(False)
    sel.register(lst, selectors.EVENT_READ)
    print(json.dumps({"listening": port}), flush=True)
    buf = bytearray(CHUNK)
    conns: list[socket.socket] = []
    base: dict[int, int] = {}  # fd → bytes received when the window opened (0 if later)
    start = time.monotonic()
    first = window_end = 0.0
    t_open = 0.0
    try:
        while True:
            now = time.monotonic()
            if not first and now - start > max_seconds:
                raise SystemExit(f"probe sink: no data within {max_seconds:g}s")
            if first and not t_open and now >= first + warm:
                t_open = time.monotonic()
                base = {c.fileno(): tcp_bytes_received(c) for c in conns}
                window_end = t_open + measure
            if t_open and now >= window_end:
                break
            deadline = first + warm if not t_open else window_end
            timeout = 0.2 if not first else max(0.0, min(0.2, deadline - now))
            for key, _ in sel.select(timeout):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is lst:
                    c, _addr = lst.accept()
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                    conns.append(c)
                    continue
                try:
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    if first:
                        raise SystemExit("probe sink: a sender went away during the measurement")
                    sel.unregister(sock)  # a connection without data (e.g. an RTT probe)
                    conns.remove(sock)
                    sock.close()
                    continue
                if not first:
                    first = time.monotonic()
        counted = sum(tcp_bytes_received(c) - base.get(c.fileno(), 0) for c in conns)
        elapsed = time.monotonic() - t_open
    finally:
        for c in conns:
            c.close()
        lst.close()
    return {"bits_per_s": counted * 8 / elapsed, "bytes": counted, "seconds": elapsed}


def send(to: str, max_seconds: float) -> None:
    host, _, port = to.rpartition(":")
    deadline = time.monotonic() + max_seconds
    data = b"\0" * CHUNK
    for _attempt in range(100):  # the sink may not listen yet: bounded retries
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    else:
        raise SystemExit(f"probe send: cannot connect to {to}")
    s.settimeout(5)
    with s:
        while time.monotonic() < deadline:
            try:
                s.sendall(data)
            except OSError:
                return  # the sink closed: its window is over
    raise SystemExit(f"probe send: still sending to {to} after {max_seconds:g}s")


def rtt(to: str, count: int) -> dict[str, object]:
    host, _, port = to.rpartition(":")
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=5):
            samples.append((time.perf_counter() - t0) * 1000)
    return {"rtt_ms": statistics.median(samples), "samples_ms": [round(x, 3) for x in samples]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("sink")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--warm", type=float, default=0.5)
    a.add_argument("--measure", type=float, default=1.5)
    a.add_argument("--max-seconds", type=float, default=30.0)
    b = sub.add_parser("send")
    b.add_argument("--to", required=True)
    b.add_argument("--max-seconds", type=float, default=30.0)
    c = sub.add_parser("rtt")
    c.add_argument("--to", required=True)
    c.add_argument("--count", type=int, default=7)
    args = ap.parse_args(argv)
    if args.mode == "rtt":
        print(json.dumps(rtt(args.to, max(1, min(args.count, 100)))), flush=True)
    elif args.mode == "sink":
        print(json.dumps(sink(args.port, args.warm, args.measure, args.max_seconds)), flush=True)
    else:
        send(args.to, args.max_seconds)


if __name__ == "__main__":
    main()
