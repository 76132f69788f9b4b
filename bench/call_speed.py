"""Wall time of ``surplus call ping``, each call a cold process, against a running controller.

Starts ``surplus run`` (the built-in simulator) on a free loopback port, waits for
it to answer, then runs ``surplus call ping`` N times, each in a new process, and
prints the median wall time next to a bare interpreter start for reference.

    .venv/bin/python bench/call_speed.py [-n 20]

Target: median < 0.3 s. Importing only what the command needs took it from 0.38 s
to 0.07 s on the development machine (about 1.1 s on a Raspberry Pi before).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(argv: list[str], env: dict[str, str], *, quiet: bool = False) -> tuple[float, int]:
    t0 = time.perf_counter()
    err = subprocess.DEVNULL if quiet else None
    rc = subprocess.run(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, check=False
    ).returncode
    return time.perf_counter() - t0, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="calls to time (default 20)")
    args = ap.parse_args()
    port = free_port()
    env = {**os.environ, "RPC_PORT": str(port), "PYTHONPATH": str(REPO)}
    call = [sys.executable, "-m", "surplus.cli", "call", "ping"]
    server = subprocess.Popen(
        [sys.executable, "-m", "surplus.cli", "run", "--duration", "600"],
        cwd=REPO,
        env={**env, "LOG_LEVEL": "warning"},
    )
    try:
        deadline = time.monotonic() + 30
        while timed(call, env, quiet=True)[1] != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                print("the controller did not come up", file=sys.stderr)
                return 1
            time.sleep(0.2)
        bare = statistics.median(timed([sys.executable, "-c", "pass"], env)[0] for _ in range(args.n))
        walls = []
        for _ in range(args.n):
            wall, rc = timed(call, env)
            if rc != 0:
                print(f"surplus call ping failed (exit {rc})", file=sys.stderr)
                return 1
            walls.append(wall)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"surplus call ping, {args.n} cold processes against 127.0.0.1:{port}")
    print(f"  median {statistics.median(walls):.3f} s  min {min(walls):.3f} s  max {max(walls):.3f} s")
    print(f"  (a bare `python -c pass`: {bare:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
