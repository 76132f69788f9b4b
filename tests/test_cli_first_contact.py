"""What a newcomer meets first, over the real CLI in a subprocess: output piped into ``head``,
a taken RPC port, the speed of ``surplus call`` (only the standard library is imported) and
the shipped example configs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from surplus.example_config import EXAMPLES
from surplus.web import RpcSettings, WebServer, start_web

from .rpc_support import FakeController

REPO = Path(__file__).resolve().parent.parent
SURPLUS = [sys.executable, "-m", "surplus.cli"]


async def run(*args: str, stdout: int = asyncio.subprocess.PIPE, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode(), err.decode()


@pytest.fixture
async def server() -> AsyncIterator[WebServer]:
    srv = await start_web(FakeController(), RpcSettings(port=0))
    yield srv
    await srv.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- `surplus ... | head` ---------------------------------------------------------------------


async def run_into_closed_pipe(*args: str) -> tuple[int, str]:
    """Run with stdout a pipe whose reader has already gone, as `| head` leaves it once satisfied."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        rc, _, err = await run(*args, stdout=write_end)
    finally:
        os.close(write_end)
    return rc, err


@pytest.mark.integration
async def test_output_into_a_closed_pipe_ends_quietly(server: WebServer) -> None:
    for args in (("plugins",), ("call", "rpc.discover", f"--url={server.url}")):
        rc, err = await run_into_closed_pipe(*SURPLUS, *args)
        assert rc == 141, (args, err)
        assert err == "", (args, err)  # no BrokenPipeError traceback, no "Exception ignored"


# -- a taken RPC port ---------------------------------------------------------------------------


async def test_a_taken_rpc_port_is_reported_before_anything_starts(busy_port: int) -> None:
    rc, out, err = await run(*SURPLUS, "run", "--duration", "5", RPC_PORT=str(busy_port))
    assert rc == 1 and out == ""
    assert f"the JSON-RPC port {busy_port} on 127.0.0.1 is in use" in err
    assert "RPC_PORT" in err and "--no-rpc" in err
    assert "Errno" not in err and "Traceback" not in err
    assert "simulator" not in err and err.count("\n") == 1  # nothing was started


async def test_no_rpc_runs_despite_a_taken_port(busy_port: int) -> None:
    rc, _, err = await run(*SURPLUS, "run", "--duration", "1", "--no-rpc", RPC_PORT=str(busy_port))
    assert rc == 0, err
    assert "in use" not in err


# -- `surplus call` imports what a call needs, not the controller ------------------------------

CALL_AND_LIST_MODULES = """
import json, sys
from surplus.cli import main
rc = main(["call", "ping", "--url", sys.argv[1]])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


@pytest.mark.integration
async def test_surplus_call_imports_the_standard_library_only(server: WebServer) -> None:
    rc, out, err = await run(sys.executable, "-c", CALL_AND_LIST_MODULES, server.url)
    assert rc == 0, err
    reply, _, tail = out.rpartition("}\n{")
    assert json.loads(reply + "}")["result"]["message"] == "pong"
    loaded = json.loads("{" + tail)
    assert loaded["rc"] == 0
    heavy = ("aiohttp", "pymodbus", "yaml", "pluggy", "asyncio", "surplus.runner", "surplus.config")
    assert [m for m in loaded["modules"] if m.split(".")[0] in heavy or m in heavy] == []


# -- example configs --------------------------------------------------------------------------


async def test_example_config_prints_the_shipped_files() -> None:
    rc, out, _ = await run(*SURPLUS, "example-config")
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()[: len(EXAMPLES)]] == list(EXAMPLES)
    for name in ("amtron.yaml", "surplus.service", "demo.yaml"):
        rc, out, err = await run(*SURPLUS, "example-config", name)
        assert rc == 0, err
        assert out == (REPO / "config" / name).read_text()
    rc, out, _ = await run(*SURPLUS, "example-config", "amtron")  # the extension may be left out
    assert rc == 0 and out == (REPO / "config" / "amtron.yaml").read_text()
    rc, out, err = await run(*SURPLUS, "example-config", "nope.yaml")
    assert rc == 2 and out == ""
    assert err == f"surplus example-config: no example config 'nope.yaml'; there are: {', '.join(EXAMPLES)}\n"


def test_every_file_in_config_is_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(p.name for p in (REPO / "config").iterdir() if p.is_file())
