"""Placing a verified file at the user's ``--output`` atomically, and checking room for it.

A temp file is made in the output's directory (a hard link to the data file when both are on one
file system, else a copy), then ``os.replace``d onto the output. Whatever fails, nothing is left
at the output nor any temp file beside it. These functions block: call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from damselfly.core.errors import DamselflyError, NoSpaceError

_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def temp_path(output: str) -> str:
    """A fresh hidden name beside ``output`` (same directory, so os.replace is atomic)."""
    d, name = os.path.split(output)
    return os.path.join(d, f".{name[:200]}.damselfly-{secrets.token_hex(6)}.tmp")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and ".damselfly-" in name and name.endswith(".tmp")


def same_filesystem(a: str | Path, b: str | Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def check_output_dir(output: str) -> str:
    """The output's directory, checked: it exists, is a directory and is writable."""
    if os.path.isdir(output):
        raise DamselflyError(f"output {output} is a directory", "give a file name with --output")
    d = os.path.dirname(output) or "."
    if not os.path.isdir(d):
        raise DamselflyError(
            f"directory {d} does not exist", "create it or choose another --output"
        )
    if not os.access(d, os.W_OK | os.X_OK):
        raise DamselflyError(f"directory {d} is not writable", "choose another --output")
    return d


def check_room(directory: str | Path, need: int, what: str) -> None:
    """Raise NoSpaceError at once when ``directory`` has fewer than ``need`` free bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise NoSpaceError(
            f"not enough free space in {directory} for {what}: {need} bytes needed, {free} free",
            "free some space or choose another directory",
        )


def place(data_path: str | Path, output: str) -> str:
    """Put a copy of ``data_path`` at ``output`` atomically; return "link" or "copy"."""
    tmp = temp_path(output)
    how = "link"
    try:
        try:
            os.link(data_path, tmp)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            how = "copy"
            _copy(str(data_path), tmp)
        os.replace(tmp, output)
    except OSError as e:
        _unlink(tmp)
        if e.errno in _NO_SPACE:
            raise NoSpaceError(
                f"not enough free space to write {output}", "free some space and try again"
            ) from e
        raise DamselflyError(
            f"could not write {output}: {e.strerror or e}", "check the directory's permissions"
        ) from e
    except BaseException:
        _unlink(tmp)
        raise
    # rename() of two links to one inode does nothing and succeeds: the temp name survives.
    _unlink(tmp)
    return how


def _copy(src: str, dst: str) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1024 * 1024)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
