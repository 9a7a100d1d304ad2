"""The ``dfget`` command: v1's flags, the download handed to this host's engine.

``dfget -u URL [-o FILE] [-n supernodes] …`` finds (or starts) the engine of ``--home``, sends it
the download over its control socket — the only place ``--header`` values travel — shows
progress, and prints ``download SUCCESS cost:<s>s length:<bytes> reason:<n>`` or one line
``download FAIL(<code>) <what happened and what to do>`` (exit code ≠ 0, never a traceback).
``dfget server`` runs the engine in the foreground; ``dfget version`` prints the version.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import Any

from damselfly import __version__
from damselfly.core.errors import REASON_DOWNLOAD_ERROR, ConfigError, DamselflyError
from damselfly.core.logs import formatter
from damselfly.dfget.options import (
    Options,
    build_parser,
    build_server_parser,
    engine_config,
    load_file_config,
    resolve,
)
from damselfly.peer.client import EngineClient, EngineStopping

log = logging.getLogger("damselfly.dfget")

EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] == "version":
            print(f"dfget version {__version__} (damselfly)")
            return 0
        if args and args[0] == "server":
            return _server(args[1:])
        return _download(args)
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _server(args: list[str]) -> int:
    ap = build_server_parser()
    ns = ap.parse_args(args)
    try:
        cfg = engine_config(ns, load_file_config(ns.config), foreground=True)
    except ConfigError as e:
        ap.error(str(e))
    from damselfly.peer.engine import run_engine  # the engine's stack, only when serving

    return run_engine(cfg)


def _download(args: list[str]) -> int:
    started = time.monotonic()
    ap = build_parser()
    ns = ap.parse_args(args)
    try:
        opts = resolve(ns, load_file_config(ns.config), os.getcwd())
    except ConfigError as e:
        ap.error(str(e))
    _setup_logging(opts)
    try:
        return _run(opts, started)
    except KeyboardInterrupt:
        _fail(
            REASON_DOWNLOAD_ERROR,
            f"interrupted (Ctrl-C): the download was cancelled and nothing was written to "
            f"{opts.output}",
        )
        return EXIT_INTERRUPTED


def _run(opts: Options, started: float) -> int:
    from damselfly.peer.launcher import ensure_engine

    for attempt in range(2):
        try:
            return _hand_over(ensure_engine(opts.engine), opts, started)
        except EngineStopping:
            # the engine was exiting (idle) as we arrived: the next look starts a new one
            log.debug("the engine was shutting down; asking a new one (attempt %d)", attempt + 1)
        except DamselflyError as e:
            return _fail(REASON_DOWNLOAD_ERROR, str(e))
    return _fail(REASON_DOWNLOAD_ERROR, "the engine keeps shutting down; run the command again")


def _hand_over(client: EngineClient, opts: Options, started: float) -> int:
    log.debug("engine of %s answers; handing it the download", opts.engine.home)
    bar = _Bar(opts.showbar)
    result: dict[str, Any] | None = None
    try:
        for ev in client.download(opts.request()):
            kind = ev.get("event")
            if kind == "progress":
                bar.update(ev)
            elif kind == "log":
                log.info("%s", str(ev.get("message", ""))[:500])
            elif kind == "result":
                result = ev
    except EngineStopping:
        raise
    except DamselflyError as e:
        bar.close()
        return _fail(REASON_DOWNLOAD_ERROR, f"{e} (see {opts.engine.home / 'logs'})")
    finally:
        bar.close()
    if result is None:  # pragma: no cover  (client.download ends only with a result)
        return _fail(REASON_DOWNLOAD_ERROR, "the engine ended the download without a result")
    reason = _int(result.get("reason"))
    if result.get("ok") is True:
        cost = time.monotonic() - started
        print(
            f"download SUCCESS cost:{cost:.3f}s length:{_int(result.get('length'))} reason:{reason}"
        )
        sys.stdout.flush()
        src = result.get("bytes_from")
        if isinstance(src, dict):
            # where the bytes came from (shown with --console/--verbose; the demo reads it)
            log.info(
                "bytes from origin:%d supernode:%d peers:%d",
                _int(src.get("origin")),
                _int(src.get("supernode")),
                _int(src.get("peers")),
            )
        return 0
    return _fail(reason, str(result.get("message") or "the download failed"))


def _fail(code: int, message: str) -> int:
    line = " ".join(message.split())  # one line
    print(f"download FAIL({code}) {line}", file=sys.stderr)
    sys.stderr.flush()
    return EXIT_FAIL


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _setup_logging(opts: Options) -> None:
    if not (opts.console or opts.verbose):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(formatter(opts.engine.log.format, "dfget: %(message)s"))
    root = logging.getLogger("damselfly")
    root.addHandler(h)
    root.setLevel(logging.DEBUG if opts.verbose else logging.INFO)


class _Bar:
    """A tqdm progress bar on a terminal (``-b``); nothing otherwise."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted and sys.stderr.isatty()
        self.bar: Any = None

    def update(self, ev: dict[str, Any]) -> None:
        if not self.wanted:
            return
        done, total = _int(ev.get("completed")), _int(ev.get("total"))
        if self.bar is None:
            from tqdm import tqdm

            size = shutil.get_terminal_size()  # 80x24 when the terminal reports no size
            self.bar = tqdm(
                total=total if total > 0 else None,
                # tqdm hides its bar on a terminal that reports 0x0 (a bare pty): say the size
                ncols=min(size.columns, 120),
                nrows=size.lines,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=True,
            )
        self.bar.update(max(0, done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


if __name__ == "__main__":
    sys.exit(main())
