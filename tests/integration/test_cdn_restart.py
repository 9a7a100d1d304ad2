"""A supernode process killed (SIGKILL) in the middle of a fetch: the next run resumes it from
the pieces recorded on disk with a Range request, and the file comes out whole and correct."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from tests.integration.cdn_helpers import Recorder, make_file, running_cdn, running_origin, sha256

REPO = Path(__file__).resolve().parents[2]


def held_in_meta(meta: Path) -> int:
    try:
        return sum(d is not None for d in json.loads(meta.read_text())["digests"])
    except (OSError, ValueError, KeyError):
        return 0


async def test_a_killed_fetch_resumes_from_the_recorded_pieces(tmp_path: Path) -> None:
    size = 24 * MiB
    data = make_file(tmp_path / "www" / "f.bin", size)
    home = tmp_path / "home"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    async with running_origin(tmp_path / "www") as (origin, base):
        url = f"{base}/f.bin"
        tid = task_id(url)
        meta = home / "repo" / tid[:2] / f"{tid}.meta"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.cdn_helpers",
            "--home",
            str(home),
            "--url",
            url,
            "--task-id",
            tid,
            "--rate",
            str(8 * MiB),  # ~3 s for the file: killed after about one
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                ready = 0
                while ready < 2:
                    line = await proc.stdout.readline()
                    assert line, "the CDN process exited early"
                    ready += json.loads(line)[0] == "piece_ready"
                while held_in_meta(meta) < 2:  # the checkpoint follows within milliseconds
                    await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # (The origin may have pushed more than the CDN took into socket buffers: the wire runs
        # ahead of a rate limit. What matters is what the cache recorded.)

        rec = Recorder()
        async with running_cdn(home, rec) as cdn:
            view = cdn.get(tid)
            assert view is not None and view.pieces_ready >= 2 and not view.complete
            await cdn.ensure(tid, url, {})
            await rec.wait_event("task_complete", tid)
            assert origin.gets == 2
            assert "range" in origin.header_hashes[-1] and "if-range" in origin.header_hashes[-1]
            # Only the missing pieces were received (counted by the CDN: the origin's own count
            # of the killed request may still grow a little after the kill).
            assert cdn.stats.origin_bytes == size - view.pieces_ready * 4 * MiB
            assert origin.bytes_sent < 2 * size
            assert rec.of("task_complete", tid)[0][2] == sha256(data)
            for num in range(6):  # the pieces of the killed run were re-hashed before serving
                assert await cdn.locate(tid, num) is not None
        assert (home / "repo" / tid[:2] / f"{tid}.data").read_bytes() == data
