"""A private Prometheus (and promtool) for tests: 127.0.0.1 only, its own tmp dir, bounded waits.

CI installs both with Debian's ``prometheus`` package. A missing binary fails
the test with the install hint instead of skipping it, so a broken CI image
cannot turn the metric checks green by omission.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus"


def require(tool: str) -> str:
    """The path of ``tool``; fail (not skip) the test when it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found on PATH; install it with: {INSTALL_HINT}", pytrace=False)
    return path


def promtool_check_metrics(text: str) -> tuple[int, str]:
    """Run ``promtool check metrics`` on an exposition; (return code, its output)."""
    done = subprocess.run(
        [require("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: surplus
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus:
    """One Prometheus process; ``url`` is its HTTP API base."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log_path

    def log_tail(self, lines: int = 15) -> str:
        """The end of Prometheus's own log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def query(self, session: aiohttp.ClientSession, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` at now; the decoded JSON (status, data or error)."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(self.url + "api/v1/query", params={"query": expr}, timeout=timeout) as r:
            body: dict[str, Any] = await r.json(content_type=None)
            return body

    async def vector(self, session: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to (an error fails the test)."""
        body = await self.query(session, expr)
        assert body.get("status") == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(
        self, session: aiohttp.ClientSession, expr: str, timeout_s: float = 25.0
    ) -> list[dict[str, Any]]:
        """Poll until ``expr`` is non-empty (bounded); its vector."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                result = await self.vector(session, expr)
                if result:
                    return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} stayed empty for {timeout_s} s; log:\n{self.log_tail()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}); log:\n{self.log_tail()}")
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM to our PID, SIGKILL if it lingers (bounded)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


async def _ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "-/ready", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.1)
    return False


def _launch(binary: str, workdir: Path, target: str, port: int) -> Prometheus:
    """Write the config and start the process (sync: a fork and a few small files)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.format(target=target))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    return Prometheus(proc, port, log_path)


@contextlib.asynccontextmanager
async def prometheus(
    target: str, workdir: Path, *, ready_timeout_s: float = 20.0
) -> AsyncIterator[Prometheus]:
    """Start Prometheus scraping ``target`` (host:port) every second; stop it on exit.

    Config, TSDB and log live under ``workdir``; it listens on a free 127.0.0.1 port.
    """
    binary = require("prometheus")
    last = ""
    for _attempt in range(2):  # the free port can be taken between probe and bind: try once more
        server = _launch(binary, workdir, target, free_port())
        try:
            if await _ready(server.url, server.proc, ready_timeout_s):
                yield server
                return
            last = server.log_tail()
        finally:
            server.stop()
    raise AssertionError(f"prometheus did not become ready in {ready_timeout_s} s; log:\n{last}")
