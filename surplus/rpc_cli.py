"""``surplus call METHOD [key=value ...]``: call the JSON-RPC API of a running surplus.

Values are JSON when they parse as JSON (``10`` is a number, ``true`` a bool,
``'"10"'`` a string), else plain strings. The client uses only the standard
library. Exit status: 0 success, 1 JSON-RPC error, 2 no usable reply.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

#: How long to wait for the server before giving up.
TIMEOUT_S = 15.0


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["ampere=16", "lock=true", "mode=pv"]`` -> ``{"ampere": 16, "lock": True, "mode": "pv"}``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {pair!r} is not key=value")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def call(url: str, method: str, params: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """POST one request; return the decoded reply. Raises ``OSError`` when there is no usable reply."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        # 413 and friends still carry a JSON-RPC error body.
        raw = exc.read()
        if not raw:
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    try:
        reply = json.loads(raw)
    except ValueError:
        raise OSError("the server's reply is not JSON") from None
    if not isinstance(reply, dict):
        raise OSError("the server's reply is not a JSON-RPC response")
    return reply


def run(args: argparse.Namespace) -> int:
    """Entry point of ``surplus call``."""
    try:
        params = parse_params(args.params)
    except ValueError as exc:
        print(f"surplus call: {exc}", file=sys.stderr)
        return 2
    try:
        reply = call(args.url, args.method, params, args.token)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        print(f"surplus call: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 1 if "error" in reply else 0


def add_parser(subparsers: Any) -> None:
    """Register ``surplus call``."""
    port = os.environ.get("RPC_PORT", "8080")
    p = subparsers.add_parser(
        "call",
        help="call a JSON-RPC method of a running surplus",
        description="Call a JSON-RPC method, e.g. `surplus call setChargingCurrent ampere=16`.",
    )
    p.add_argument("method", help="method name, e.g. getStatus (rpc.discover lists them all)")
    p.add_argument(
        "params", nargs="*", metavar="key=value", help="parameters; values parsed as JSON if they parse"
    )
    p.add_argument("--url", default=f"http://127.0.0.1:{port}/", help="server URL (default: %(default)s)")
    p.add_argument(
        "--token",
        default=os.environ.get("RPC_TOKEN"),
        help="bearer token for write methods (default: $RPC_TOKEN)",
    )
    p.set_defaults(func=run)
