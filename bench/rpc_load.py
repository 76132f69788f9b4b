"""JSON-RPC load: getStatus requests per second over keep-alive HTTP on 127.0.0.1.

The server runs in this process; the clients (several aiohttp sessions, one
keep-alive connection each) run in a child process so they do not steal the
server's event loop. Prints requests/s, latency percentiles, and, with the
full stack, the worst heartbeat gap the simulator saw during the load.

    .venv/bin/python bench/rpc_load.py [--seconds 5] [--clients 8] [--stack full|fake]

``full`` (default) serves from the real stack: simulator over RTU-over-TCP,
bus owner, driver, governor and loop, all in this process on the real clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BODY = b'{"jsonrpc":"2.0","method":"getStatus","params":{},"id":1}'


async def _client(url: str, deadline: float, latencies: list[float], errors: list[int]) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as resp:
                reply = await resp.json()
            latencies.append(time.perf_counter() - t0)
            if "result" not in reply:
                errors.append(reply["error"]["code"])


async def clients_main(url: str, seconds: float, clients: int) -> dict[str, Any]:
    """Run ``clients`` keep-alive clients for ``seconds``; return counts and latencies."""
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, start + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 100 else [0.0] * 99
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "rps": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


@contextlib.asynccontextmanager
async def _fake() -> AsyncIterator[tuple[str, Any]]:
    from surplus.web import RpcSettings, start_web
    from tests.rpc_support import FakeController

    server = await start_web(FakeController(), RpcSettings(port=0, stale_after_s=3600))
    try:
        yield server.url, None
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def _full() -> AsyncIterator[tuple[str, Any]]:
    from tests.rpc_support import full_stack

    async with full_stack() as (_stack, model, url):
        yield url, model


async def server_main(args: argparse.Namespace) -> int:
    """Serve (fake controller or the full stack), run the client process, print the numbers."""
    async with _full() if args.stack == "full" else _fake() as (url, model):
        beats_before = len(model.record.heartbeats) if model is not None else 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            url,
            "--seconds",
            str(args.seconds),
            "--clients",
            str(args.clients),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result = json.loads(out)
        if model is not None:
            beats = model.record.heartbeats[max(0, beats_before - 1) :]
            gap = max((b - a for a, b in itertools.pairwise(beats)), default=float("inf"))
    print(
        f"stack: {args.stack}, clients: {args.clients}, duration: {args.seconds:g} s (keep-alive, 127.0.0.1)"
    )
    print(f"getStatus: {result['requests']} requests, {result['rps']:.0f} req/s, errors {result['errors']}")
    print(f"latency: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    if model is not None:
        print(f"heartbeats during load: {len(beats)}, worst gap {gap:.2f} s (must stay < 5 s)")
    return 0 if result["errors"] == 0 else 1


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--stack", choices=("full", "fake"), default="full")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(clients_main(args.client, args.seconds, args.clients))))
        return 0
    return asyncio.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
