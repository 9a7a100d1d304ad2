"""``supernode``: the command line (v1's flags and defaults) that starts a supernode."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from damselfly import __version__
from damselfly.core.errors import ConfigError, DamselflyError
from damselfly.core.logs import LogConfig, add_log_flags, log_config, setup_logging
from damselfly.core.units import parse_duration, parse_rate, parse_size
from damselfly.supernode.config import SupernodeConfig, load_yaml

log = logging.getLogger("damselfly.supernode")


def build_parser() -> argparse.ArgumentParser:
    d = SupernodeConfig()
    ap = argparse.ArgumentParser(
        prog="supernode",
        description="Damselfly supernode: passive CDN and piece scheduler. "
        "`supernode version` prints the version; `supernode preheat --help` warms a file "
        "or an image into a running supernode's CDN.",
    )
    ap.add_argument("--config", help="YAML config file (v1 keys under 'base:')")
    ap.add_argument("--port", type=int, help=f"API port (default {d.port})")
    ap.add_argument("--download-port", type=int, help=f"piece port (default {d.download_port})")
    ap.add_argument("--listen", help=f"address to bind (default {d.listen})")
    ap.add_argument("--home-dir", help="cache and logs (default ~/.small-dragonfly/supernode)")
    ap.add_argument("--advertise-ip", help="address peers use to reach this supernode")
    ap.add_argument("--max-bandwidth", help="origin + system bandwidth, e.g. 200M (default 200M)")
    ap.add_argument("--system-bandwidth", help="reserved for the system (default 20M)")
    ap.add_argument("--up-limit", type=int, help=f"uploads per peer at once (default {d.up_limit})")
    ap.add_argument(
        "--down-limit", type=int, help=f"pieces in flight per peer (default {d.down_limit})"
    )
    ap.add_argument("--task-expire-time", help="drop idle tasks from memory after (default 3m)")
    ap.add_argument("--peer-gc-delay", help="drop silent peers after (default 3m)")
    ap.add_argument("--cdn-pattern", choices=["local", "source"], help="default local")
    ap.add_argument(
        "--piece-sizes",
        choices=["swarm", "v1"],
        help="how files are cut: swarm (~100 pieces, the default) or v1 (4 MiB up to 200 MiB)",
    )
    ap.add_argument(
        "--young-gc-threshold", help="free disk below which idle cached tasks go (default 20G)"
    )
    ap.add_argument(
        "--full-gc-threshold", help="free disk below which any unused cached task goes (5G)"
    )
    ap.add_argument(
        "--grant-ttl", help="lifetime of a grant to a private task (default 10m, 1s..24h)"
    )
    ap.add_argument(
        "--cluster-token-file",
        help="file holding the cluster token: required of every API (but /_ping) and piece "
        "request when set (default: none)",
    )
    ap.add_argument("--tls-cert", help="serve the API and the piece port over HTTPS: PEM cert")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    add_log_flags(ap)
    ap.add_argument("--verbose", action="store_true", default=None, help="debug logging")
    return ap


def load_config(argv: list[str]) -> SupernodeConfig:
    args = build_parser().parse_args(argv)
    cfg = SupernodeConfig()
    ignored: list[str] = []
    if args.config:
        ignored = load_yaml(Path(args.config), cfg)
    simple = {
        "port": args.port,
        "download_port": args.download_port,
        "listen": args.listen,
        "advertise_ip": args.advertise_ip,
        "up_limit": args.up_limit,
        "down_limit": args.down_limit,
        "cdn_pattern": args.cdn_pattern,
        "piece_sizes": args.piece_sizes,
        "verbose": args.verbose,
    }
    for k, v in simple.items():
        if v is not None:
            setattr(cfg, k, v)
    if args.home_dir:
        cfg.home_dir = Path(args.home_dir)
    if args.max_bandwidth is not None:
        cfg.max_bandwidth = parse_rate(args.max_bandwidth, "--max-bandwidth")
    if args.system_bandwidth is not None:
        cfg.system_bandwidth = parse_rate(args.system_bandwidth, "--system-bandwidth")
    if args.young_gc_threshold is not None:
        cfg.young_gc_threshold = parse_size(args.young_gc_threshold, "--young-gc-threshold")
    if args.full_gc_threshold is not None:
        cfg.full_gc_threshold = parse_size(args.full_gc_threshold, "--full-gc-threshold")
    if args.task_expire_time is not None:
        cfg.task_expire_time = parse_duration(args.task_expire_time, "--task-expire-time")
    for name in ("cluster_token_file", "tls_cert", "tls_key"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.grant_ttl is not None:
        cfg.grant_ttl = parse_duration(args.grant_ttl, "--grant-ttl")
    if args.peer_gc_delay is not None:
        cfg.peer_gc_delay = parse_duration(args.peer_gc_delay, "--peer-gc-delay")
    logs = log_config(args, LogConfig(cfg.log_format, cfg.log_max_bytes, cfg.log_backups))
    cfg.log_format, cfg.log_max_bytes, cfg.log_backups = logs.format, logs.max_bytes, logs.backups
    cfg.home_dir = cfg.home_dir.expanduser().resolve()
    cfg.validate()
    for key in ignored:
        print(f"supernode: config key base.{key} is a v1 key Damselfly ignores", file=sys.stderr)
    return cfg


async def run(cfg: SupernodeConfig) -> None:
    from damselfly.supernode.app import serve

    _node, runners = await serve(cfg)
    log.info(
        "supernode %s ready: api %s:%d, pieces %s:%d, home %s, cdn rate %s B/s",
        __version__,
        cfg.listen,
        cfg.port,
        cfg.listen,
        cfg.download_port,
        cfg.home_dir,
        cfg.cdn_rate or "unlimited",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("supernode stopping")
    for r in runners:
        await r.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["version"]:
        print(f"supernode {__version__}")
        return 0
    if argv[:1] == ["preheat"]:
        from damselfly.supernode.preheat_cli import main as preheat_main

        return preheat_main(argv[1:])
    try:
        cfg = load_config(argv)
        cfg.home_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError as e:
        print(f"supernode: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"supernode: cannot use home dir: {e}", file=sys.stderr)
        return 2
    logs = LogConfig(cfg.log_format, cfg.log_max_bytes, cfg.log_backups)
    setup_logging(cfg.verbose, True, cfg.home_dir / "logs" / "supernode.log", logs)
    try:
        asyncio.run(run(cfg))
    except OSError as e:
        print(f"supernode: cannot start: {e.strerror or e}", file=sys.stderr)
        return 1
    except DamselflyError as e:
        print(f"supernode: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
