"""Registry auth load with N dfdaemons pulling the same private image (token auth) at once.

What the registry (its access log) and the token service see, by kind, for N = 3 hosts pulling
in two rounds: all hosts at once, then every host twice at once (9 pulls). The bounds asserted
(docs/dfdaemon.md, "Registry auth load", has the figures before and after):

- each blob is fetched from the registry once in all, by the supernode, whatever N; dfdaemon
  adds no request of its own per host (no HEAD, no probe): the only requests not sent by the
  runtime are those blob GETs;
- the supernode's 1-byte access checks of the hosts' own tokens (private content) are at most
  one per token, i.e. per pull, whatever the number of layers: a check answers for the
  repository (``core.access.access_scope``), not for one blob;
- ``GET /v2/`` probes reach the registry at most once per host and credential per probe-cache
  window (``PROBE_TTL``), not once per pull;
- manifests and tokens stay per pull (a tag must resolve fresh; the token service is reached by
  the runtime itself, at the challenge's realm);
- no Bearer token (nor the password) shows up in a log, an argv, ``/metrics`` or a file under the
  homes.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from tests.integration.test_dfdaemon_auth import (
    TokenService,
    assert_secrets_nowhere,
    start_token_registry,
)
from tests.integration.test_dfdaemon_images import (
    Daemon,
    Registry,
    auth_file,
    build_image,
    needs_registry,
    pull_via_mirror,
    push,
    serve_app,
    start_dfdaemon,
)
from tests.integration.test_dfdaemon_registry import SKOPEO_AGENT, assert_same_image, mirror_config
from tests.procs import Procs, http_get, start_supernode

HOSTS = 3


def kinds(reg: Registry, since: int = 0) -> Counter[str]:
    """The registry's requests after the first ``since``, by kind and by who sent them."""
    out: Counter[str] = Counter()
    for method, path, status, agent in reg.requests()[since:]:
        who = "runtime" if SKOPEO_AGENT in agent else "swarm"
        if who == "swarm" and "/blobs/" in path and status == 206:
            kind = "access check"  # the supernode's 1-byte check of a host's own credentials
        elif path.split("?")[0] in ("/v2/", "/v2"):
            kind = "probe"
        elif "/manifests/" in path:
            kind = "manifest"
        elif "/blobs/" in path:
            kind = "blob"
        else:
            kind = "other"
        out[f"{who} {method} {kind}"] += 1
    return out


def pull_round(
    reg: Registry, daemons: list[Daemon], per_host: int, tmp: Path, creds: list[Path], tag: str
) -> None:
    results: dict[tuple[int, int], Any] = {}

    def pull(i: int, j: int) -> None:
        out = tmp / f"out-{tag}-{i}-{j}"
        results[(i, j)] = (
            pull_via_mirror(reg, daemons[i].port, "private/load", out, tmp, creds[i]),
            out,
        )

    threads = [
        threading.Thread(target=pull, args=(i, j))
        for i in range(len(daemons))
        for j in range(per_host)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(results) == len(threads)
    for (i, _j), (r, _out) in results.items():
        assert r.returncode == 0, (r.stderr, daemons[i].proc.output()[-4000:])


@needs_registry
def test_auth_and_probe_load_is_bounded_with_three_hosts(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [2_000_000, 1_000_000, 500_000], seed=50)
    ts = TokenService(tmp_path / "ts")
    with serve_app(ts.app(), "token-service") as ts.port:
        reg = start_token_registry(procs, tmp_path / "reg", ts)
        push_creds = auth_file(tmp_path / "push.json", {reg.addr: (ts.user, ts.password)})
        push(img, reg, "private/load", push_creds)
        sn = start_supernode(procs, tmp_path / "sn")
        daemons = [
            start_dfdaemon(
                procs, tmp_path / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}"
            )
            for i in range(HOSTS)
        ]
        creds = [
            auth_file(tmp_path / f"pull{i}.json", {f"127.0.0.1:{d.port}": (ts.user, ts.password)})
            for i, d in enumerate(daemons)
        ]
        start, tokens_before = len(reg.requests()), ts.count("ok")
        pull_round(reg, daemons, 1, tmp_path, creds, "a")  # every host once, all at once
        pull_round(reg, daemons, 2, tmp_path, creds, "b")  # every host twice at once
        pulls = HOSTS * 3
        seen = kinds(reg, start)
        tokens = ts.count("ok") - tokens_before
        checks = seen["swarm GET access check"]
        print(
            f"\n{pulls} pulls by {HOSTS} hosts of {len(img.blobs)} blobs: registry {dict(seen)};"
            f" token service {tokens}; access checks {checks} (bound: tokens = {tokens})"
        )

        for out in tmp_path.glob("out-*"):
            assert_same_image(out, img.blobs)
        # blobs: once in all, from the swarm; nothing else comes from the swarm side
        assert seen["runtime GET blob"] == 0 and seen["runtime HEAD blob"] == 0
        assert seen["swarm GET blob"] == len(img.blobs)
        assert sum(n for k, n in seen.items() if k.startswith("swarm ")) == len(img.blobs) + checks
        # private content (docs/reliability.md): before a host gets a private layer from the
        # swarm, the supernode checks that the host's own token opens it with a 1-byte ranged
        # GET, cached by (repository, credential): one check answers for every blob of the
        # repository, so at most one per token — and every pull brings one new bearer token
        # (every host's token opens the repository: no blob request was refused)
        assert all(s in (200, 206) for _m, p, s, _a in reg.requests()[start:] if "/blobs/" in p)
        assert checks <= tokens <= pulls, seen
        full = Counter(
            path.split("?")[0].rsplit("/", 1)[-1]
            for method, path, status, _agent in reg.requests()[start:]
            if method == "GET" and "/blobs/" in path and status == 200
        )
        assert all(full.get(b) == 1 for b in img.blobs), full
        # probes: at most one per host (one credential each, all within the probe-cache window)
        probes = seen["runtime GET probe"] + seen["runtime HEAD probe"]
        assert 1 <= probes <= HOSTS, seen
        # manifests and tokens: the runtime's own, once per pull (dfdaemon adds none)
        assert seen["runtime GET manifest"] + seen["runtime HEAD manifest"] <= 2 * pulls
        assert tokens <= pulls
        metrics = [http_get(f"http://127.0.0.1:{d.port}/metrics")[1].decode() for d in daemons]
        assert_secrets_nowhere(
            [*ts.issued[tokens_before:], ts.password],
            [*(d.proc.output() for d in daemons), sn.proc.output(), *metrics],
            [*(d.home for d in daemons), sn.home],
            [*(d.proc.pid for d in daemons), sn.proc.pid],
        )
