"""Writes one benchmark's section into docs/benchmarks.md between markers, with the machine."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def write_section(path: Path, key: str, title: str, how: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- bench:key -->`` markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    section = (
        f"{start}\n## {title}\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.\n\n"
        f"Command: {how}\n\n{body.rstrip()}\n{end}"
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    path.write_text(text)
