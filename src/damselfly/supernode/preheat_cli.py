"""``supernode preheat``: ask a running supernode to warm a file or an image into its CDN, and
wait for the job to finish (``--no-wait`` prints the job id and returns at once).

Prints ``preheat SUCCESS id:<id> tasks:<n> <message>`` and exits 0, or ``preheat FAILED …`` on
stderr and exits 1 (2 for bad flags or an unreachable supernode). Header values go to the
supernode in the request body only; they are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from damselfly.core.errors import ConfigError
from damselfly.core.ids import parse_filter, task_id
from damselfly.core.nodes import parse_nodes, rendezvous_order

POLL_S = 0.5
REQUEST_TIMEOUT = 10.0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="supernode preheat",
        description="Warm a file or a container image into a supernode's CDN.",
    )
    ap.add_argument("--url", required=True, help="file URL, or an image's manifest URL")
    ap.add_argument("--type", choices=["file", "image"], default="file", help="default file")
    ap.add_argument(
        "-n",
        "--node",
        default="127.0.0.1:8002",
        help="supernodes host[:port],… (a file goes to the one that owns its task, as dfget's)",
    )
    ap.add_argument("-f", "--filter", default="", help="query keys left out of the task id (a&b)")
    ap.add_argument("-i", "--identifier", default="", help="task identity salt (as dfget -i)")
    ap.add_argument("--header", action="append", default=[], help="'Key: Value' sent to the origin")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 1h)")
    ap.add_argument("--no-wait", action="store_true", help="print the job id and return")
    return ap


def _call(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    # always http://<supernode>/…: built here from a parsed --node, never taken from input
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")  # noqa: S310
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as r:  # noqa: S310
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("message", "")
        except ValueError:
            msg = ""
        raise RuntimeError(f"the supernode answered {e.code}: {msg or e.reason}") from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    headers: dict[str, str] = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            print("supernode preheat: --header must be 'Key: Value'", file=sys.stderr)
            return 2
        headers[k.strip()] = v.strip()
    try:
        nodes = parse_nodes(args.node)
    except ConfigError as e:
        print(f"supernode preheat: --node: {e}", file=sys.stderr)
        return 2
    if not nodes:
        print("supernode preheat: --node names no supernode", file=sys.stderr)
        return 2
    # the supernode a dfget of this file registers with first (rendezvous order of the task id)
    tid = task_id(args.url, parse_filter(args.filter), "", args.identifier)
    node = rendezvous_order(tid, nodes)[0]
    base = f"http://{node.addr}"
    body = {
        "type": args.type,
        "url": args.url,
        "filter": args.filter,
        "identifier": args.identifier,
        "headers": headers,
    }
    try:
        jid = _call(f"{base}/preheats", body)["id"]
        if args.no_wait:
            print(jid)
            return 0
        deadline = time.monotonic() + args.timeout
        while True:
            job = _call(f"{base}/preheats/{jid}")
            if job.get("status") in ("SUCCESS", "FAILED"):
                break
            if time.monotonic() > deadline:
                print(f"preheat TIMEOUT id:{jid} still {job.get('status')}", file=sys.stderr)
                return 1
            time.sleep(POLL_S)
    except RuntimeError as e:
        print(f"preheat FAILED {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(
            f"supernode preheat: cannot reach the supernode at {node.addr}: {e} "
            "(check --node and that the supernode runs)",
            file=sys.stderr,
        )
        return 2
    line = f"id:{jid} tasks:{len(job.get('tasks', []))} {job.get('message', '')}"
    if job["status"] == "SUCCESS":
        print(f"preheat SUCCESS {line}")
        return 0
    print(f"preheat FAILED {line}", file=sys.stderr)
    return 1
