"""Fixed added latency without ``netem``: hold every queued packet for a fixed time (NFQUEUE).

This kernel has no ``netem`` qdisc (and no ``fq`` for timestamp-based delay), so the harness puts
an iptables ``NFQUEUE`` rule on the bridge namespace's FORWARD chain (with
``bridge-nf-call-iptables=1``) and runs this program there. It binds the queue over a raw
``NETLINK_NETFILTER`` socket, asks only for packet metadata (``NFQNL_COPY_META``: no payload is
copied), accepts GSO packets whole (``NFQA_CFG_F_GSO``), and releases packets in arrival order
with one ``NFQNL_MSG_VERDICT_BATCH`` ("accept every id up to N") once they have waited
``--ms`` milliseconds. Every packet crosses the bridge once, so ``--ms`` is the one-way delay
and the RTT between two hosts is twice it.

    python -m benchmarks.swarm.delay --queue 0 --ms 10 [--ready-file F]

It runs until SIGTERM/SIGINT. The pure part (``DelayLine``) decides what to release when; the
rest is the netlink driver.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 1 << 2
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
QUEUE_MAXLEN = 65536
RCVBUF = 64 * 1024 * 1024
TICK = 0.0005  # while packets are held: drain and release every 0.5 ms


class DelayLine:
    """Arrivals (highest packet id of the group, arrival time) in FIFO order; ``due(now)`` says
    up to which id to accept (ids grow in arrival order, so "all up to N" is exact)."""

    def __init__(self, delay_s: float) -> None:
        self.delay = delay_s
        self.q: collections.deque[tuple[int, float]] = collections.deque()
        self.held_max = 0

    def arrive(self, packet_id: int, now: float) -> None:
        """Packets up to ``packet_id`` arrived at ``now``."""
        self.q.append((packet_id, now))
        self.held_max = max(self.held_max, len(self.q))

    def due(self, now: float) -> int | None:
        """The highest id whose time has come (all before it are released too), or None."""
        last = None
        while self.q and self.q[0][1] + self.delay <= now:
            last = self.q.popleft()[0]
        return last

    def next_deadline(self) -> float | None:
        return self.q[0][1] + self.delay if self.q else None


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _msg(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_INET, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def config_messages(queue: int) -> list[bytes]:
    """Bind the queue; metadata only; a long queue; GSO packets whole."""
    return [
        _msg(
            NFQNL_MSG_CONFIG,
            queue,
            _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)),
            NLM_F_REQUEST | NLM_F_ACK,
            1,
        ),
        _msg(
            NFQNL_MSG_CONFIG,
            queue,
            _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
            + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
            + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)),
            NLM_F_REQUEST | NLM_F_ACK,
            2,
        ),
    ]


def verdict_batch(queue: int, up_to_id: int) -> bytes:
    return _msg(
        NFQNL_MSG_VERDICT_BATCH,
        queue,
        _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, up_to_id)),
    )


def parse(buf: bytes | bytearray | memoryview, n: int) -> tuple[list[int], list[int]]:
    """Packet ids and netlink error codes found in one datagram of ``n`` bytes."""
    ids: list[int] = []
    errors: list[int] = []
    off = 0
    while off + 16 <= n:
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if length < 16 or off + length > n:
            break
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, off + 16)
            if code:
                errors.append(-code)
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 16 + 4  # after nlmsghdr and nfgenmsg
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", buf, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", buf, a + 4)[0])
                    break
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids, errors


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class BatchReceiver:
    """``recvmmsg(2)`` through ctypes: up to ``SLOTS`` queue messages per system call, each cut
    to its first ``SLOT`` bytes (all that is read is the packet id at byte 24). One system call
    per packet would cost more CPU than a 2-core swarm can spare."""

    SLOTS = 512
    SLOT = 64
    MSG_DONTWAIT = 0x40

    def __init__(self, fd: int) -> None:
        self.fd = fd
        libc = ctypes.CDLL(None, use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(_Mmsghdr),
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._recvmmsg.restype = ctypes.c_int
        self.buf = ctypes.create_string_buffer(self.SLOTS * self.SLOT)
        self.iov = (_Iovec * self.SLOTS)()
        self.msgs = (_Mmsghdr * self.SLOTS)()
        base = ctypes.addressof(self.buf)
        for i in range(self.SLOTS):
            self.iov[i].iov_base = base + i * self.SLOT
            self.iov[i].iov_len = self.SLOT
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.view = memoryview(self.buf).cast("B")
        self.errors = 0

    def drain(self, limit: int = 256) -> tuple[int, int]:
        """(the highest packet id received or -1, how many packets) — without blocking."""
        last, count = -1, 0
        view, unpack_from, msgs, slot = self.view, struct.unpack_from, self.msgs, self.SLOT
        for _ in range(limit):  # bounded: at most limit × SLOTS messages per drain
            n = self._recvmmsg(self.fd, self.msgs, self.SLOTS, self.MSG_DONTWAIT, None)
            if n < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.EINTR):
                    break
                raise OSError(err, os.strerror(err))
            for i in range(n):
                off = i * slot
                if (
                    msgs[i].msg_len >= 28
                    and unpack_from("=H", view, off + 4)[0] == PACKET_TYPE
                    and view[off + 22] == NFQA_PACKET_HDR
                ):
                    last = unpack_from("!I", view, off + 24)[0]
                    count += 1
                else:
                    self.errors += 1
            if n < self.SLOTS:
                break
        return last, count


def run(queue: int, delay_ms: float, ready_file: str) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    buf = bytearray(65536)
    for m in config_messages(queue):
        sock.send(m)
        n = sock.recv_into(buf)
        _ids, errors = parse(buf, n)
        if errors:
            raise SystemExit(
                f"delay: binding NFQUEUE {queue} failed: {os.strerror(errors[0])} "
                "(is another program bound to that queue?)"
            )
    with contextlib.suppress(OSError, AttributeError):  # exact timing matters more than CPU
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready_file:
        Path(ready_file + ".tmp").write_text(str(os.getpid()))
        os.replace(ready_file + ".tmp", ready_file)
    line = DelayLine(delay_ms / 1000.0)
    sock.setblocking(False)
    receiver = BatchReceiver(sock.fileno())
    packets = releases = 0
    monotonic = time.monotonic
    last_drain = monotonic()
    while not stop:
        deadline = line.next_deadline()
        if deadline is None:
            # nothing held: block until a packet comes (its arrival time is then exact)
            try:
                select.select([sock], [], [], 0.5)
            except InterruptedError:
                continue
            last_drain = monotonic()
        else:
            # packets held: tick, draining arrivals in batches and releasing what is due
            time.sleep(max(0.0, min(TICK, deadline - monotonic())))
        now = monotonic()
        last, count = receiver.drain()
        packets += count
        if last >= 0:
            # they came in since the last drain: stamp them with the middle of that interval
            line.arrive(last, (last_drain + now) / 2)
        last_drain = now
        up_to = line.due(monotonic())
        if up_to is not None:
            sock.send(verdict_batch(queue, up_to))
            releases += 1
    # leave nothing queued: accept everything still held
    last_id = None
    while line.q:
        last_id = line.q.popleft()[0]
    if last_id is not None:
        with contextlib.suppress(OSError):
            sock.send(verdict_batch(queue, last_id))
    sock.close()
    print(
        f"delay: stopped after {packets} packets in {releases} releases; at most "
        f"{line.held_max} arrival groups held at once; {receiver.errors} other messages",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="hold NFQUEUE packets for a fixed time")
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--ms", type=float, required=True)
    ap.add_argument("--ready-file", default="")
    args = ap.parse_args(argv)
    if not 0 < args.ms <= 1000:
        raise SystemExit("delay: --ms must be in (0, 1000]")
    run(args.queue, args.ms, args.ready_file)


if __name__ == "__main__":
    main()
