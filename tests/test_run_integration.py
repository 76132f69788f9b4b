"""`surplus run` as a real process against the simulator over a real pty pair."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surplus.clock import SystemClock
from surplus.sim.model import AmtronModel, DeviceProfile, EvProfile
from surplus.sim.server import SimulatorServer

from .loop_support import assert_governor_rules_held

pytestmark = pytest.mark.integration

SURPLUS = [sys.executable, "-m", "surplus.cli"]


@pytest.fixture
async def pty_sim(tmp_path: Path) -> AsyncIterator[tuple[SimulatorServer, AmtronModel]]:
    model = AmtronModel(SystemClock(), ev=EvProfile())
    server = SimulatorServer({50: model}, transport="pty", link_path=str(tmp_path / "amtron"))
    await server.start()
    try:
        yield server, model
    finally:
        await server.stop()


def _config(tmp_path: Path, port: str, body: str) -> Path:
    path = tmp_path / "surplus.yaml"
    path.write_text(textwrap.dedent(body).format(port=port))
    return path


async def _run(args: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODBUS_", "RPC_", "HEARTBEAT_", "LOG_"))}
    proc = await asyncio.create_subprocess_exec(
        *SURPLUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


GOOD = """\
    bus:
      port: {port}
    chargers:
      - id: wallbox
        device_id: 50
        mode: fixed
        strategies:
          fixed: {{current_a: 11}}
        limits: {{fuse_limit_a: 16}}
    meters: []
    """


async def test_surplus_run_drives_the_simulator_over_a_pty(
    tmp_path: Path, pty_sim: tuple[SimulatorServer, AmtronModel]
) -> None:
    server, model = pty_sim
    cfg = _config(tmp_path, server.url, GOOD)
    code, out = await _run(["run", "-c", str(cfg), "--duration", "7", "--no-rpc"])
    assert code == 0, out
    rec = model.record
    assert rec.heartbeats, "no heartbeat reached the simulator"
    gaps = [b - a for a, b in zip(rec.heartbeats, rec.heartbeats[1:], strict=False)]
    assert max(gaps) < 5.0
    currents = [w.value for w in rec.writes if w.register == "CHARGING_CURRENT_EM"]
    assert 11.0 in currents, out
    assert_governor_rules_held(rec)
    assert "current 11 A" in out  # one log line per setpoint change, with the reason


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (GOOD.replace("fuse_limit_a: 16", "fuse_limit_a: 40"), ":9: chargers[0].limits.fuse_limit_a"),
        (GOOD.replace("mode: fixed", "mode: fixed\n        colour: red"), ":7: chargers[0].colour"),
        (GOOD.replace("device_id: 50", "device_id: fifty"), ":5: chargers[0].device_id"),
    ],
    ids=["40A-limit", "unknown-key", "wrong-type"],
)
async def test_a_bad_config_fails_at_start_naming_key_and_line_and_writes_nothing(
    tmp_path: Path, pty_sim: tuple[SimulatorServer, AmtronModel], body: str, needle: str
) -> None:
    server, model = pty_sim
    cfg = _config(tmp_path, server.url, body)
    code, out = await _run(["run", "-c", str(cfg), "--duration", "3", "--no-rpc"])
    assert code == 2
    assert needle in out, out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    assert model.record.writes == []


async def test_a_box_left_at_fallback_0_is_warned_about_and_box_fallback_a_sets_it(tmp_path: Path) -> None:
    """Issue 10 item 1 over a real pty and a real process: warn at start, and the opt-in write."""
    factory = AmtronModel(
        SystemClock(), profile=DeviceProfile(master_lost_fallback_current_a=0), ev=EvProfile()
    )
    server = SimulatorServer({50: factory}, transport="pty", link_path=str(tmp_path / "amtron"))
    await server.start()
    try:
        await _fallback_runs(tmp_path, server, factory)
    finally:
        await server.stop()


async def _fallback_runs(tmp_path: Path, server: SimulatorServer, factory: AmtronModel) -> None:
    code, out = await _run(
        ["run", "-c", str(_config(tmp_path, server.url, GOOD)), "--duration", "1", "--no-rpc"]
    )
    assert code == 0, out
    assert "heartbeat-loss fallback (0x030E) is 0: if surplus stops, a charging car goes on" in out
    assert not [w for w in factory.record.writes if w.register == "SETTING_FALLBACK_CURRENT"]

    opted_in = GOOD.replace("meters: []", "meters: []\n    control:\n      box_fallback_a: 1")
    code, out = await _run(
        ["run", "-c", str(_config(tmp_path, server.url, opted_in)), "--duration", "1", "--no-rpc"]
    )
    assert code == 0, out
    assert [w.value for w in factory.record.writes if w.register == "SETTING_FALLBACK_CURRENT"] == [1]
    assert "heartbeat-loss fallback set to 1 (was 0)" in out
    assert "is 0: if surplus stops" not in out
