"""The Node server's README client examples (curl, Python requests, JS jayson) and `surplus call`,
run unchanged (only the port substituted) against surplus's server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surplus.api import Override
from surplus.cli import main as cli_main
from surplus.sim.model import AmtronModel
from surplus.web import RpcSettings, WebServer, start_web

from .loop_support import assert_governor_rules_held
from .rpc_support import FakeController, full_stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"

# The README's curl examples, verbatim.
README_CURL = """\
# Get status
curl -X POST http://localhost:8080 \\
  -H "Content-Type: application/json" \\
  -d '{"jsonrpc":"2.0","method":"getStatus","params":{},"id":1}'

# Start charging
curl -X POST http://localhost:8080 \\
  -H "Content-Type: application/json" \\
  -d '{"jsonrpc":"2.0","method":"startCharging","params":{"current":10},"id":1}'

# Set charging current
curl -X POST http://localhost:8080 \\
  -H "Content-Type: application/json" \\
  -d '{"jsonrpc":"2.0","method":"setChargingCurrent","params":{"ampere":16},"id":1}'
"""

# The README's Python client example, verbatim.
README_PYTHON = """\
import requests
import json

url = 'http://localhost:8080'

def call_rpc(method, params=None):
    payload = {
        "jsonrpc": "2.0",
        "method": method,
        "params": params or {},
        "id": 1
    }
    response = requests.post(url, json=payload)
    return response.json()

# Get status
status = call_rpc('getStatus')
print(status['result']['data'])

# Start charging
call_rpc('startCharging', {'current': 10})

# Get power
power = call_rpc('getChargingPower')
print(f"Charging power: {power['result']['data']} kW")
"""


@pytest.fixture
def ctl() -> FakeController:
    return FakeController()


@pytest.fixture
async def server(ctl: FakeController) -> AsyncIterator[WebServer]:
    srv = await start_web(ctl, RpcSettings(port=0))
    yield srv
    await srv.close()


@pytest.fixture
async def real() -> AsyncIterator[tuple[int, AmtronModel]]:
    """The full stack (simulator, bus, driver, governor, loop, RPC); yields (port, simulator model)."""
    async with full_stack() as (stack, model, _url):
        yield stack.web.port, model


def written(model: AmtronModel, register: str) -> list[float]:
    return [
        float(w.value) for w in model.record.writes if w.register == register and w.exception_code is None
    ]


async def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_readme_curl_examples(real: tuple[int, AmtronModel]) -> None:
    assert shutil.which("curl"), "curl is not installed: `make test` installs it (.ci/system-deps)"
    port, model = real
    script = README_CURL.replace("localhost:8080", f"localhost:{port}")
    replies = []
    for command in script.split("\n\n"):
        rc, out, err = await run("sh", "-c", command)
        assert rc == 0, err
        replies.append(json.loads(out))
    assert replies[0]["result"]["data"]["evseStateText"]
    assert replies[1]["result"]["data"]["status"] in ("applied", "unchanged", "scheduled")
    assert replies[2]["result"]["data"]["status"] in ("applied", "scheduled")
    # 16 A follows within the 5 s spacing rule, through the governor.
    async with asyncio.timeout(8):
        while 16.0 not in written(model, "CHARGING_CURRENT_EM"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert_governor_rules_held(model.record)


async def test_readme_python_example(server: WebServer, ctl: FakeController) -> None:
    script = README_PYTHON.replace("localhost:8080", f"localhost:{server.port}")
    rc, out, err = await run(sys.executable, "-c", script)
    assert rc == 0, err
    lines = out.splitlines()
    assert "'evseState': 5" in lines[0]
    assert lines[1] == "Charging power: 10.503 kW"
    assert ctl.overrides == [("wb1", Override(charge=True, current_a=10.0, reason="rpc startCharging"))]


#: Where `make node-deps` (part of `make test`) installs tests/node's packages from its lockfile.
NODE_DEPS = REPO / ".cache" / "rpc-node"


def node_workdir(deps: Path = NODE_DEPS) -> Path:
    """The directory with tests/node's packages as the install step left them; the test downloads nothing."""
    if not (deps / ".installed").exists() or not (deps / "node_modules" / "jayson").is_dir():
        pytest.fail(
            f"the Node client's packages are not installed in {deps}: run `make node-deps` (`make test` does)"
        )
    if (deps / "package-lock.json").read_bytes() != (NODE_DIR / "package-lock.json").read_bytes():
        pytest.fail(f"the Node client's packages in {deps} are out of date: run `make node-deps`")
    shutil.copy(NODE_DIR / "readme-example.mjs", deps / "readme-example.mjs")
    return deps


def test_missing_node_packages_fail_with_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"not installed in .*: run `make node-deps`"):
        node_workdir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was fetched or written


async def test_readme_jayson_example(real: tuple[int, AmtronModel]) -> None:
    assert shutil.which("node"), "node is not installed: `make test` installs it (.ci/system-deps)"
    port, model = real
    workdir = node_workdir()
    env = {**os.environ, "RPC_PORT": str(port)}
    mark = len(model.record.writes)
    rc, out, err = await run(shutil.which("node") or "node", "readme-example.mjs", cwd=workdir, env=env)
    assert rc == 0, err
    assert "evseState:" in out and "Charging power:" in out and " kW" in out
    # What the simulator saw: 16 A (after the example's own 5 s wait), then the release opened.
    later = model.record.writes[mark:]
    assert [w.value for w in later if w.register == "CHARGING_CURRENT_EM"][-1:] == [16.0]
    assert [w.value for w in later if w.register == "CHARGING_RELEASE_EM"][-1:] == [0]
    assert_governor_rules_held(model.record)


# -- surplus call -----------------------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = await asyncio.to_thread(cli_main, ["call", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


async def test_surplus_call(
    server: WebServer, ctl: FakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"--url={server.url}"
    rc, out, _ = await cli(capsys, "getStatus", url)
    assert rc == 0 and json.loads(out)["result"]["data"]["evseState"] == 5
    assert out.startswith("{\n  ")  # pretty-printed
    rc, out, _ = await cli(capsys, "setLock", "lock=true", url)
    assert rc == 0 and ctl.overrides[-1] == ("wb1", Override(lock=True, reason="rpc setLock"))
    rc, out, _ = await cli(capsys, "setMode", "mode=fixed", "chargerId=wb1", url)
    assert rc == 0 and ctl.modes["wb1"] == "fixed"
    rc, out, _ = await cli(capsys, "setChargingCurrent", "ampere=99", url)
    assert rc == 1 and json.loads(out)["error"]["code"] == -32602
    rc, out, _ = await cli(capsys, "setChargingCurrent", 'ampere="16"', url)
    assert rc == 1 and json.loads(out)["error"]["message"] == "ampere must be a number between 6 and 32"
    rc, out, err = await cli(capsys, "ping", "nonsense", url)
    assert rc == 2 and "not key=value" in err


async def test_surplus_call_connection_failure(capsys: pytest.CaptureFixture[str]) -> None:
    srv = await start_web(FakeController(), RpcSettings(port=0))
    port = srv.port
    await srv.close()
    rc, out, err = await cli(capsys, "ping", f"--url=http://127.0.0.1:{port}/")
    assert rc == 2 and out == ""
    assert err.startswith(f"surplus call: cannot reach http://127.0.0.1:{port}/") and err.count("\n") == 1
    assert "Traceback" not in err


async def test_surplus_call_token_and_subprocess(ctl: FakeController) -> None:
    srv = await start_web(ctl, RpcSettings(port=0, token="tok"))
    try:
        base = [sys.executable, "-m", "surplus.cli", "call", "stopCharging", f"--url={srv.url}"]
        env = {k: v for k, v in os.environ.items() if k != "RPC_TOKEN"}
        rc, out, _ = await run(*base, cwd=REPO, env=env)
        assert rc == 1 and json.loads(out)["error"]["code"] == -32001
        rc, out, _ = await run(*base, cwd=REPO, env={**env, "RPC_TOKEN": "tok"})
        assert rc == 0 and json.loads(out)["result"]["data"]["status"] == "applied"
    finally:
        await srv.close()
