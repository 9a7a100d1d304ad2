"""A blob whose bytes do not match the digest its URL names, pulled through dfdaemon's swarm
stream: the client never gets the whole body (the connection is cut before the last bytes), the
stream is what caught it, and the engine keeps no copy of the wrong bytes — so pulling it again
is cut again rather than served from a poisoned cache."""

from __future__ import annotations

import hashlib
import http.client
import os
from pathlib import Path

from tests.integration.test_dfdaemon_images import start_dfdaemon
from tests.procs import Procs, start_origin, start_supernode, wait_until


def get_body(port: int, path: str) -> tuple[int, int, bytes, bool]:
    """(status, Content-Length, the bytes received, whether the body came whole)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        length = int(resp.getheader("Content-Length") or -1)
        got = bytearray()
        try:
            while chunk := resp.read(65536):
                got += chunk
        except (http.client.IncompleteRead, ConnectionError) as e:
            if isinstance(e, http.client.IncompleteRead):
                got += e.partial
            return resp.status, length, bytes(got), False
        return resp.status, length, bytes(got), len(got) == length
    finally:
        conn.close()


def test_a_blob_that_does_not_match_its_digest_is_cut_and_not_kept(
    procs: Procs, tmp_path: Path
) -> None:
    body = os.urandom(5_000_000)  # more than one stream chunk: some bytes do go out first
    claimed = hashlib.sha256(b"the layer the manifest names").hexdigest()
    blob = tmp_path / "origin" / "v2" / "team" / "app" / "blobs" / f"sha256:{claimed}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(body)
    origin = start_origin(procs, tmp_path / "origin")
    sn = start_supernode(procs, tmp_path / "sn")
    home = tmp_path / "d" / "home"
    d = start_dfdaemon(
        procs,
        home,
        {
            "registry_mirror": {"remote": f"http://127.0.0.1:{origin.port}"},
            "proxies": [{"regx": "blobs/sha256.*"}],
            "node": [sn.addr],
        },
    )
    path = f"/v2/team/app/blobs/sha256:{claimed}"
    for attempt in (1, 2):
        status, length, got, whole = get_body(d.port, path)
        assert status == 200 and length == len(body), attempt
        assert not whole and len(got) < len(body), f"attempt {attempt}: the wrong body came whole"
        assert got == body[: len(got)]  # what did come is in order
        # no data file of the task is left in the engine's store
        wait_until(lambda: not list((home / "data").glob("*.data")), what="the wrong copy dropped")
    out = d.proc.output()
    assert out.count("the URL says") == 2, "the stream's own digest check caught it both times"
    assert "dropping the local copy" in out
