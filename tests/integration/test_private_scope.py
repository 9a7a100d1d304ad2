"""The scope of the supernode's access checks, against a real registry (issue 6 item 3, issue 7
item 5): Debian's ``docker-registry`` with token auth and the test's token service, which signs
tokens for exactly the repositories asked. A check of a blob answers for its repository (one
check per credential and repository, not per blob); a token for repository A is refused every
blob of repository B on the same registry — each time asked at B, never answered from A's
check — whether B's blob is already in the swarm or not; and a blob of B named under A's path is
not found. See docs/reliability.md, "Private content"."""

from __future__ import annotations

import json
from pathlib import Path

from damselfly.core.access import access_scope
from tests.integration.test_dfdaemon_auth import TokenService, start_token_registry
from tests.integration.test_dfdaemon_images import (
    Registry,
    auth_file,
    build_image,
    needs_registry,
    push,
    serve_app,
)
from tests.integration.test_private import REFUSAL, register
from tests.procs import Procs, http_get, start_supernode, wait_until


class Log:
    """The registry's access log, read up to a marker request of the test's own, so that every
    request answered before the marker was sent is in what is returned."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.seen = 0
        self.marks = 0

    def since_last(self, full_gets: int = 0) -> list[tuple[str, int]]:
        """(path, status) of the registry's requests since the previous call (markers left
        out), once ``full_gets`` whole blob GETs (200) are logged among them: a CDN fetch is
        logged when its body is sent, after the registration that started it was answered."""

        def fetched() -> bool:
            new = self.reg.requests()[self.seen :]
            return sum(1 for _m, p, s, _a in new if "/blobs/" in p and s == 200) >= full_gets

        wait_until(fetched, what=f"{full_gets} blob fetches by the supernode")
        self.marks += 1
        mark = f"/v2/scope-test-mark-{self.marks}/tags/list"
        http_get(f"http://{self.reg.addr}{mark}", timeout=5)
        found: list[list[tuple[str, int]]] = []

        def logged() -> bool:
            reqs = self.reg.requests()
            paths = [p for _m, p, _s, _a in reqs]
            if mark not in paths:
                return False
            end = paths.index(mark)
            found.append([(p, s) for _m, p, s, _a in reqs[self.seen : end]])
            self.seen = end + 1
            return True

        wait_until(logged, what="the registry's access log")
        return [(p, s) for p, s in found[0] if "/scope-test-mark-" not in p]


@needs_registry
def test_a_token_for_one_repository_opens_no_blob_of_another(procs: Procs, tmp_path: Path) -> None:
    img_a = build_image(tmp_path / "a", [300_000, 200_000], seed=61)
    img_b = build_image(tmp_path / "b", [250_000, 150_000, 120_000], seed=62)
    ts = TokenService(tmp_path / "ts")
    with serve_app(ts.app(), "token-service") as ts.port:
        reg = start_token_registry(procs, tmp_path / "reg", ts)
        creds = auth_file(tmp_path / "push.json", {reg.addr: (ts.user, ts.password)})
        push(img_a, reg, "private/a", creds)
        push(img_b, reg, "private/b", creds)
        sn = start_supernode(procs, tmp_path / "sn")
        log = Log(reg)
        log.since_last()

        def token(*repos: str) -> dict[str, str]:
            access = [{"type": "repository", "name": r, "actions": ["pull"]} for r in repos]
            return {"Authorization": f"Bearer {ts.sign(ts.user, access)}"}

        def url(repo: str, digest: str) -> str:
            return f"http://{reg.addr}/v2/{repo}/blobs/{digest}"

        def reg_ok(u: str, peer: str, hdrs: dict[str, str]) -> None:
            code, body = register(sn.addr, u, peer, hdrs)
            assert code == 200 and body["private"] is True and body["grant"], body

        def reg_refused(u: str, peer: str, hdrs: dict[str, str]) -> None:
            code, body = register(sn.addr, u, peer, hdrs)
            assert code == 403 and body["error"] == "origin_auth", body
            assert REFUSAL in body["message"]
            assert hdrs["Authorization"][7:] not in json.dumps(body)

        a_blobs = [url("private/a", d) for d in img_a.blobs]  # 2 layers + config
        b_blobs = [url("private/b", d) for d in img_b.blobs]  # 3 layers + config
        assert len({access_scope(u) for u in a_blobs + b_blobs}) == 2

        # the owners bring their repositories' blobs into the swarm (but for B's last blob):
        # each registration's CDN fetch is its check
        tok_a, tok_b = token("private/a"), token("private/b")
        for i, u in enumerate(a_blobs):
            reg_ok(u, f"owner-a-{i}", tok_a)
        for i, u in enumerate(b_blobs[:-1]):
            reg_ok(u, f"owner-b-{i}", tok_b)
        fetched = log.since_last(full_gets=len(a_blobs) + len(b_blobs) - 1)
        assert sorted(p for p, s in fetched if s == 200) == sorted(
            u.split(reg.addr, 1)[1] for u in a_blobs + b_blobs[:-1]
        ), fetched

        # another token for A, on every blob of A: one 1-byte check for the repository
        tok_a2 = token("private/a")
        for i, u in enumerate(a_blobs):
            reg_ok(u, f"second-a-{i}", tok_a2)
        checks = log.since_last()
        assert len(checks) == 1, checks
        assert checks[0][0].startswith("/v2/private/a/blobs/") and checks[0][1] == 206, checks

        # A's first token at B's blob that is not in the swarm yet: the CDN fetch, made with
        # this token at B's URL, is refused; then B's blobs that are in the swarm: refused from
        # that refusal (same token, same repository), nothing more asked
        reg_refused(b_blobs[-1], "intruder-1", tok_a)
        for i, u in enumerate(b_blobs[:-1]):
            reg_refused(u, f"intruder-1-{i}", tok_a)
        asked = log.since_last()
        assert asked and all(p.startswith("/v2/private/b/blobs/") and s == 401 for p, s in asked)
        assert len(asked) <= 3, asked  # the CDN's own tries with one token (AUTH_ATTEMPTS)

        # A's second token, whose check of A is cached: asked at B (not answered from A's
        # check), refused, once for all of B's blobs
        for i, u in enumerate(b_blobs):
            reg_refused(u, f"intruder-2-{i}", tok_a2)
        asked = log.since_last()
        assert len(asked) == 1, asked
        assert asked[0][0].startswith("/v2/private/b/blobs/") and asked[0][1] == 401, asked

        # a blob of B named under A's path, with A's token: A's repository has no such blob
        code, body = register(sn.addr, url("private/a", img_b.layers[0]), "intruder-3", tok_a)
        assert code == 404 and body["error"] == "origin_not_found", body
        asked = log.since_last()
        assert asked and all(
            p == f"/v2/private/a/blobs/{img_b.layers[0]}" and s == 404 for p, s in asked
        ), asked

        # B's own owner and a token for both repositories are still let in everywhere
        reg_ok(b_blobs[-1], "owner-b-last", tok_b)
        both = token("private/a", "private/b")
        for i, u in enumerate(a_blobs + b_blobs):
            reg_ok(u, f"both-{i}", both)
        asked = log.since_last(full_gets=1)
        # B's last blob fetched by the CDN with B's token; one check per repository for `both`
        assert sorted(s for _p, s in asked) == [200, 206, 206], asked
        assert sum(1 for p, s in asked if s == 206 and p.startswith("/v2/private/a/")) == 1
        assert sum(1 for p, s in asked if s == 206 and p.startswith("/v2/private/b/")) == 1
