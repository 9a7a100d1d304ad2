"""Pull benchmark: time for skopeo to pull a multi-layer image straight from a local
docker-registry vs through one and N dfdaemons (cold: nothing cached anywhere; cached: the same
daemons pull again), with the registry's blob bytes served. Loopback, no link shaping (see the
section it writes for what that means).

    python benchmarks/registry_pull.py [--layers 4] [--layer-mb 40] [--n 3] [--write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from tests.integration.test_dfdaemon_images import (  # noqa: E402
    build_image,
    pull_via_mirror,
    push,
    skopeo,
    start_dfdaemon,
    start_registry,
)
from tests.integration.test_dfdaemon_registry import mirror_config  # noqa: E402
from tests.procs import Procs, start_supernode  # noqa: E402


def blob_bytes(reg, digests) -> int:  # type: ignore[no-untyped-def]
    gets = reg.blob_gets()
    return sum(gets.get(d, 0) * size for d, size in digests.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mb", type=int, default=40)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="registry-pull-"))
    procs = Procs(work)
    rows = []
    try:
        img = build_image(work / "img", [a.layer_mb * 1_000_000] * a.layers, seed=7)
        sizes = {
            d: (img.layout / "blobs/sha256" / d.split(":")[1]).stat().st_size for d in img.layers
        }
        total = sum(sizes.values())
        reg = start_registry(procs, work / "reg")
        push(img, reg, "bench/app")
        base = blob_bytes(reg, sizes)

        def timed(label: str, fn) -> None:  # type: ignore[no-untyped-def]
            nonlocal base
            t = time.monotonic()
            fn()
            dt = time.monotonic() - t
            served = blob_bytes(reg, sizes) - base
            base += served
            rows.append((label, dt, served))
            print(f"{label:45s} {dt:7.2f}s  registry blob bytes {served / 1e6:8.1f} MB", flush=True)

        def direct(i: int) -> None:
            r = skopeo(
                "copy",
                "--src-tls-verify=false",
                f"docker://{reg.addr}/bench/app:latest",
                f"oci:{work / f'direct{i}'}:latest",
            )
            assert r.returncode == 0, r.stderr

        timed("direct from the registry, 1 host", lambda: direct(100))
        sn = start_supernode(procs, work / "sn")
        daemons = [
            start_dfdaemon(procs, work / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}")
            for i in range(a.n)
        ]

        def via(i: int, tag: str) -> None:
            r = pull_via_mirror(reg, daemons[i].port, "bench/app", work / f"out-{tag}-{i}", work)
            assert r.returncode == 0, r.stderr

        def many(tag: str, fn) -> None:  # type: ignore[no-untyped-def]
            ts = [threading.Thread(target=fn, args=(i, tag) if tag else (i,)) for i in range(a.n)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        timed("through dfdaemon, 1 host, cold", lambda: via(0, "cold"))
        timed("through dfdaemon, 1 host, cached", lambda: via(0, "cached"))
        timed(f"direct from the registry, {a.n} hosts at once", lambda: many("", direct))
        # a cold swarm for N hosts: a fresh supernode and fresh daemons
        for p in list(procs.procs):
            if p.name.startswith(("dfd", "supernode")):
                procs.stop(p)
        sn = start_supernode(procs, work / "sn2", name="supernode2")
        daemons = [
            start_dfdaemon(procs, work / f"e{i}" / "home", mirror_config(reg, sn.addr), f"dfe{i}")
            for i in range(a.n)
        ]
        timed(f"through dfdaemon, {a.n} hosts at once, cold", lambda: many("ncold", via))
        timed(f"through dfdaemon, {a.n} hosts at once, cached", lambda: many("ncached", via))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    body = (
        f"Image: {a.layers} layers of {a.layer_mb} MB (gzip, {total / 1e6:.0f} MB of blobs), "
        "skopeo 1.9 pulling into an OCI layout; Debian docker-registry 2.8 on 127.0.0.1; one "
        f"supernode; {a.n} dfdaemons with separate homes. **Loopback, no link shaping**: the "
        "registry is not the bottleneck here, so this measures dfdaemon's overhead, not the "
        "swarm's saving on a slow registry link.\n\n"
        "| run | time (s) | registry blob bytes served (MB) |\n|---|---|---|\n"
        + "".join(f"| {label} | {dt:.2f} | {served / 1e6:.1f} |\n" for label, dt, served in rows)
    )
    print(body)
    if a.write:
        write_section(
            ROOT / "docs" / "benchmarks.md",
            "registry-pull",
            "Registry pull through dfdaemon",
            "`python benchmarks/registry_pull.py --write`",
            body,
        )


if __name__ == "__main__":
    main()
