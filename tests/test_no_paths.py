"""No reply and no metric label names a device or file path, even when the bus fails (the log may)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from surplus.jsonrpc import without_paths

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "could not open port /dev/ttyUSB0: [Errno 2] No such file or directory: '/dev/ttyUSB0'",
            "could not open port <serial port>: [Errno 2] No such file or directory: '<serial port>'",
        ),
        ("/dev/pts/3: connection lost", "<serial port>: connection lost"),
        ("cannot write /var/lib/surplus/governor.json", "cannot write <path>"),
        # Not paths: these stay.
        ("GET /metrics, pause/resume, 1/3 phases", "GET /metrics, pause/resume, 1/3 phases"),
        (
            "tcp://192.168.1.9:502 and http://127.0.0.1:8080/a/b",
            "tcp://192.168.1.9:502 and http://127.0.0.1:8080/a/b",
        ),
    ],
)
def test_without_paths(text: str, expected: str) -> None:
    assert without_paths(text) == expected


BROKEN_BUS = """\
bus:
  port: {port}
  reconnect_interval_ms: 200
chargers:
  - id: wallbox
    device_id: 50
    mode: fixed
    strategies:
      fixed: {{current_a: 10}}
meters: []
rpc:
  port: 0
  max_connections: 7
"""


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "surplus.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("where", ["dev", "tmp"])
async def test_a_failing_port_is_described_without_its_path(where: str, tmp_path: Path) -> None:
    from surplus.clock import SystemClock
    from surplus.config import load_config
    from surplus.runner import build_stack

    port = "/dev/ttySURPLUS-missing9" if where == "dev" else str(tmp_path / "adapter" / "ttyGone")
    config = load_config(write_config(tmp_path, BROKEN_BUS.format(port=port)), {})
    async with build_stack(config, clock=SystemClock()) as stack:
        run = asyncio.ensure_future(stack.controller.run())
        try:
            assert stack.web is not None and stack.web.guard.max_connections == 7  # rpc.max_connections
            url = f"http://127.0.0.1:{stack.web.port}/"
            async with aiohttp.ClientSession() as session:

                async def rpc(method: str, params: dict[str, Any] | None = None) -> Any:
                    req = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 1}
                    async with session.post(url, json=req) as resp:
                        return await resp.json()

                async with asyncio.timeout(5):  # the first attempt to open the port (a real server: poll)
                    while (await rpc("health"))["result"]["data"]["chargers"]["wallbox"]["lastError"] is None:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                texts = [json.dumps(await rpc("health"))]
                last_error = (await rpc("health"))["result"]["data"]["chargers"]["wallbox"]["lastError"]
                texts.append(json.dumps(await rpc("getDecision")))
                texts.append(json.dumps(await rpc("setChargingCurrent", {"ampere": 10})))
                for endpoint in ("healthz", "metrics"):
                    async with session.get(url + endpoint) as resp:
                        texts.append(await resp.text())
        finally:
            stack.controller.stop()
            await asyncio.wait_for(run, 10)
    # Says what went wrong, in words...
    assert "cannot open" in last_error and "No such file or directory" in last_error
    assert "<serial port>" in last_error if where == "dev" else "<path>" in last_error
    # ... but not where things are on the machine.
    for text in texts:
        assert "/dev/" not in text and port not in text and str(tmp_path) not in text
    assert 'surplus_bus_connected{bus="bus"} 0.0' in texts[-1]
