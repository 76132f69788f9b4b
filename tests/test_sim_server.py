"""The simulator on a real wire: real pymodbus clients over RTU-over-TCP and a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from surplus.clock import SystemClock
from surplus.modbus import codec
from surplus.modbus import registers as R
from surplus.sim.model import PROFILE_22KW, AmtronModel, EvProfile
from surplus.sim.server import SimulatorServer, frame_time_s, transaction_wire_time_s

pytestmark = pytest.mark.integration

Client = AsyncModbusTcpClient | AsyncModbusSerialClient
# Calls that should succeed get a generous timeout (a loaded CI machine can stall for a while);
# calls that are meant to fail run inside `failing_fast`, which shortens it for that one call.
TIMEOUT_S = 3.0
FAIL_TIMEOUT_S = 0.2


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def readable_runs() -> list[tuple[int, int]]:
    """Contiguous runs of readable registers: what a firmware that refuses gaps lets you read."""
    runs: list[tuple[int, int]] = []
    for reg in R.REGISTERS:
        if not reg.access.readable:
            continue
        if runs and sum(runs[-1]) == reg.address:
            runs[-1] = (runs[-1][0], runs[-1][1] + reg.count)
        else:
            runs.append((reg.address, reg.count))
    return runs


async def connect(url: str, *, timeout_s: float = TIMEOUT_S, baudrate: int = 57600) -> Client:
    client: Client
    if url.startswith("tcp://"):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        client = AsyncModbusTcpClient(
            host, port=int(port), framer=FramerType.RTU, timeout=timeout_s, retries=0, reconnect_delay=0
        )
    else:
        client = AsyncModbusSerialClient(
            url,
            framer=FramerType.RTU,
            baudrate=baudrate,
            stopbits=2,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
    assert await client.connect(), f"cannot connect to {url}"
    return client


@contextlib.contextmanager
def failing_fast(client: Client, timeout_s: float = FAIL_TIMEOUT_S) -> Iterator[None]:
    """Expect a ModbusException from the block, waiting only `timeout_s` per call for it."""
    params = client.ctx.comm_params  # the transaction manager keeps its own copy
    saved = params.timeout_connect
    params.timeout_connect = timeout_s
    try:
        with pytest.raises(ModbusException):
            yield
    finally:
        params.timeout_connect = saved


async def read_map(
    client: Client, device_id: int = 50, *, input_registers: bool = False
) -> dict[str, codec.Value]:
    values: dict[str, codec.Value] = {}
    for start, count in readable_runs():
        if input_registers:
            rr = await client.read_input_registers(start, count=count, device_id=device_id)
        else:
            rr = await client.read_holding_registers(start, count=count, device_id=device_id)
        assert not rr.isError(), f"0x{start:04X} x{count}: {rr}"
        values.update(codec.decode_span(R.REGISTERS, start, rr.registers))
    return values


async def write(client: Client, reg: R.Register, value: codec.Value, device_id: int = 50) -> object:
    words = codec.encode(reg, value)
    if reg.count == 1:
        return await client.write_register(reg.address, words[0], device_id=device_id)
    return await client.write_registers(reg.address, words, device_id=device_id)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimulatorServer, AmtronModel]]:
    model = AmtronModel(SystemClock(), ev=EvProfile(accept_delay_s=0.0))
    async with SimulatorServer({50: model}) as server:
        yield server, model


def test_the_runs_cover_every_block_of_the_brief() -> None:
    starts = {start for start, _ in readable_runs()}
    assert {0x0000, 0x0100, 0x0300, 0x0500, 0x0706, 0x0900, 0x0B00, 0x0D02, 0x0E00, 0x1000} <= starts
    assert (0x0500, 20) in readable_runs()


@pytest.mark.parametrize("input_registers", [False, True], ids=["fc3", "fc4"])
async def test_every_block_reads_and_decodes_sensibly_over_tcp(
    sim: tuple[SimulatorServer, AmtronModel], input_registers: bool
) -> None:
    server, _ = sim
    assert server.url.startswith("tcp://127.0.0.1:")
    client = await connect(server.url)
    try:
        v = await read_map(client, input_registers=input_registers)
    finally:
        client.close()
    readable = {r.name for r in R.REGISTERS if r.access.readable}
    assert set(v) == readable
    assert v["MODBUS_LAYOUT_VERSION"] == 0x0103
    assert (v["FIRMWARE_VERSION"], v["SERIAL_NUMBER"], v["ARTICLE_NUMBER"]) == (
        "5.22.3",
        "SIM0000001",
        "1320221",
    )
    assert (v["EVSE_STATE"], v["CP_STATE"], v["ACTIVE_ERROR_CODE"]) == (3, 11, 0)
    assert (v["MAX_CURRENT_EVSE"], v["MAX_CURRENT_HOUSE"], v["PHASE_OPTIONS_HW"]) == (16.0, 32.0, 2)
    assert all(220 < float(v[f"VOLTAGE_L{i}"]) < 240 for i in (1, 2, 3))
    assert v["SETTING_PHASE_SWITCHING_PAUSE"] == v["PHASE_SWITCHING_PAUSE"] == 90
    assert 15 < float(v["TEMPERATURE"]) < 40
    assert float(v["CHARGED_ENERGY_TOTAL"]) == pytest.approx(1234.5)
    assert v["CABLE_LOCK_STATUS"] == 2


async def test_writes_take_effect_and_refusals_are_exception_replies(
    sim: tuple[SimulatorServer, AmtronModel],
) -> None:
    server, model = sim
    client = await connect(server.url)
    try:
        for reg, value in (
            (R.HEARTBEAT_EM, R.HEARTBEAT_VALUE),
            (R.CHARGING_RELEASE_EM, 1),
            (R.CHARGING_CURRENT_EM, 9.5),
        ):
            rr = await write(client, reg, value)
            assert not rr.isError(), rr  # type: ignore[attr-defined]
        assert (model.em_current_a, model.release, len(model.record.heartbeats)) == (9.5, 1, 1)
        v = await read_map(client)
        assert (v["CHARGING_CURRENT_EM"], v["SIGNALED_CURRENT"], v["EVSE_STATE"]) == (9.5, 9.5, 5)
        assert float(v["CURRENT_L1"]) == pytest.approx(9.5, abs=0.1)
        refused = [
            (await write(client, R.EVSE_STATE, 1), 2),
            (await write(client, R.CHARGING_CURRENT_EM, 40.0), 3),
            (await write(client, R.HEARTBEAT_EM, 0x1234), 3),
            (await client.read_holding_registers(R.HEARTBEAT_EM.address, count=1, device_id=50), 2),
            (await client.read_holding_registers(0x0000, count=35, device_id=50), 2),  # crosses a gap
        ]
        for rr, code in refused:
            assert rr.isError() and rr.exception_code == code, rr  # type: ignore[attr-defined]
        assert model.em_current_a == 9.5
    finally:
        client.close()


async def test_two_chargers_on_one_line_and_unknown_ids_stay_silent() -> None:
    a = AmtronModel(SystemClock(), seed=1)
    b = AmtronModel(SystemClock(), profile=PROFILE_22KW, seed=2)
    async with SimulatorServer({50: a, 11: b}) as server:
        client = await connect(server.url)
        try:
            await write(client, R.CHARGING_CURRENT_EM, 12.0, device_id=11)
            assert (a.em_current_a, b.em_current_a) == (0.0, 12.0)
            va, vb = await read_map(client, 50), await read_map(client, 11)
            assert (va["MAX_CURRENT_EVSE"], vb["MAX_CURRENT_EVSE"]) == (16.0, 32.0)
            assert (va["CHARGING_CURRENT_EM"], vb["CHARGING_CURRENT_EM"]) == (0.0, 12.0)
            rr = await write(client, R.REQUESTED_PHASES, 1, device_id=11)  # 22 kW: cannot switch
            assert rr.isError() and rr.exception_code == 3  # type: ignore[attr-defined]
            with failing_fast(client):
                await client.read_holding_registers(0x0100, count=1, device_id=12)
        finally:
            client.close()


async def test_reply_delay_makes_the_client_time_out(sim: tuple[SimulatorServer, AmtronModel]) -> None:
    server, _ = sim
    client = await connect(server.url)
    try:
        server.faults.reply_delay_s = 0.5
        with failing_fast(client):
            await client.read_holding_registers(0x0100, count=1, device_id=50)
        server.faults.reply_delay_s = 0.0
        await asyncio.sleep(0.4)  # let the late reply arrive and be dropped
        rr = await client.read_holding_registers(0x0100, count=1, device_id=50)
        assert not rr.isError()
    finally:
        client.close()


async def test_garbled_replies_are_client_errors_not_crashes(
    sim: tuple[SimulatorServer, AmtronModel],
) -> None:
    server, model = sim
    client = await connect(server.url)
    try:
        server.faults.garble_replies = 2
        for _ in range(2):
            with failing_fast(client):
                await client.read_holding_registers(0x0500, count=20, device_id=50)
        assert server.faults.garble_replies == 0
        rr = await client.read_holding_registers(0x0500, count=20, device_id=50)
        assert not rr.isError() and len(rr.registers) == 20
        assert model.record.reads == 3  # the device did answer; the line broke the replies
    finally:
        client.close()


async def test_exception_replies_then_normal_again(sim: tuple[SimulatorServer, AmtronModel]) -> None:
    server, model = sim
    client = await connect(server.url)
    try:
        server.faults.exception_replies, server.faults.exception_code = 2, 6
        codes = []
        for _ in range(3):
            rr = await write(client, R.CHARGING_RELEASE_EM, 1)
            codes.append(rr.exception_code if rr.isError() else None)  # type: ignore[attr-defined]
        assert codes == [6, 6, None]
        assert len(model.record.writes) == 1  # the refused ones never reached the device
    finally:
        client.close()


async def test_a_silent_line_times_out_and_the_device_hears_nothing(
    sim: tuple[SimulatorServer, AmtronModel],
) -> None:
    server, model = sim
    client = await connect(server.url)
    try:
        server.faults.silent = True
        with failing_fast(client):
            await write(client, R.CHARGING_RELEASE_EM, 1)
        assert model.record.writes == [] and model.release == 0
        server.faults.silent = False
        rr = await write(client, R.CHARGING_RELEASE_EM, 1)
        assert not rr.isError()  # type: ignore[attr-defined]
    finally:
        client.close()


async def test_tcp_vanish_and_restore_at_the_same_url(sim: tuple[SimulatorServer, AmtronModel]) -> None:
    server, _ = sim
    url = server.url
    client = await connect(url)
    await server.vanish()
    with failing_fast(client):
        await client.read_holding_registers(0x0100, count=1, device_id=50)
    client.close()
    refused = AsyncModbusTcpClient(
        "127.0.0.1",
        port=int(url.rsplit(":", 1)[1]),
        framer=FramerType.RTU,
        timeout=0.2,
        retries=0,
        reconnect_delay=0,
    )
    assert not await refused.connect()
    refused.close()
    await server.restore()
    assert server.url == url
    client = await connect(url)
    try:
        rr = await client.read_holding_registers(0x0100, count=1, device_id=50)
        assert not rr.isError()
    finally:
        client.close()


async def test_pty_transport_reads_writes_vanishes_and_returns(tmp_path: Path) -> None:
    model = AmtronModel(SystemClock(), ev=EvProfile())
    link = tmp_path / "amtron"
    async with SimulatorServer({50: model}, transport="pty", link_path=str(link)) as server:
        assert server.url == str(link) and link.is_symlink()
        client = await connect(server.url)
        try:
            v = await read_map(client)
            assert (v["MODBUS_LAYOUT_VERSION"], v["EVSE_STATE"]) == (0x0103, 3)
            rr = await write(client, R.CHARGING_CURRENT_EM, 7.25)
            assert not rr.isError() and model.em_current_a == 7.25  # type: ignore[attr-defined]
            server.faults.garble_replies = 1
            with failing_fast(client):
                await client.read_holding_registers(0x0100, count=1, device_id=50)
            server.faults.silent = True
            with failing_fast(client):
                await client.read_holding_registers(0x0100, count=1, device_id=50)
            server.faults.silent = False
            rr = await client.read_holding_registers(0x0100, count=1, device_id=50)
            assert rr.registers == [3]
            await server.vanish()
            assert not _lexists(link)
            with failing_fast(client):
                await client.read_holding_registers(0x0100, count=1, device_id=50)
        finally:
            client.close()
        await server.restore()
        assert link.is_symlink()
        client = await connect(server.url)
        try:
            rr = await client.read_holding_registers(R.CHARGING_CURRENT_EM.address, count=2, device_id=50)
            assert codec.decode(R.CHARGING_CURRENT_EM, rr.registers) == 7.25
        finally:
            client.close()
    assert not _lexists(link)


async def test_pty_client_at_another_baud_rate_gets_no_answer(tmp_path: Path) -> None:
    model = AmtronModel(SystemClock())
    async with SimulatorServer(
        {50: model}, transport="pty", link_path=str(tmp_path / "amtron"), baudrate=19200
    ) as server:
        for baudrate in (57600, 9600):
            client = await connect(server.url, baudrate=baudrate)
            try:
                with failing_fast(client):
                    await client.read_holding_registers(0x0100, count=1, device_id=50)
            finally:
                client.close()
        assert model.record.reads == 0  # the box heard only noise
        client = await connect(server.url, baudrate=19200)
        try:
            rr = await client.read_holding_registers(0x0100, count=1, device_id=50)
            assert not rr.isError() and model.record.reads == 1
        finally:
            client.close()


def test_wire_time_arithmetic() -> None:
    # 8N2 is 11 bits per character: a 20-register read is 8 + 45 bytes plus two 3.5-character gaps.
    assert frame_time_s(45, 57600) == pytest.approx(48.5 * 11 / 57600)
    assert transaction_wire_time_s(3, 20, baudrate=57600) == pytest.approx(60 * 11 / 57600)
    assert transaction_wire_time_s(16, 2, baudrate=9600, parity="E", stopbits=1) == pytest.approx(
        (16.5 + 11.5) * 11 / 9600
    )


async def test_wire_time_holds_a_20_register_read_for_its_wire_time() -> None:
    expected = transaction_wire_time_s(3, 20, baudrate=9600)  # ~69 ms
    elapsed = {}
    for wire_time in (False, True):
        async with SimulatorServer(
            {50: AmtronModel(SystemClock())}, wire_time=wire_time, baudrate=9600
        ) as server:
            client = await connect(server.url, timeout_s=1.0)
            try:
                t0 = time.perf_counter()
                for _ in range(3):
                    rr = await client.read_holding_registers(0x0500, count=20, device_id=50)
                    assert not rr.isError()
                elapsed[wire_time] = (time.perf_counter() - t0) / 3
            finally:
                client.close()
    assert elapsed[True] >= expected
    assert elapsed[True] < expected + 0.25
    assert elapsed[False] < elapsed[True]


ROOT = Path(__file__).resolve().parents[1]


async def _start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "surplus.cli", "sim", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    return proc, line


@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_surplus_sim_serves_until_sigterm(tmp_path: Path, transport: str) -> None:
    where = ["--tcp", "127.0.0.1:0"] if transport == "tcp" else ["--pty", str(tmp_path / "amtron")]
    proc, line = await _start_cli(
        *where,
        "--device-id",
        "50",
        "--device-id",
        "11",
        "--profile",
        "22kw",
        "--no-ev",
        "--fallback-current",
        "0",
    )
    try:
        assert line.startswith("AMTRON simulator (22 kW, device ids 50, 11) on "), line
        url = line.rsplit("MODBUS_PORT=", 1)[1].strip()
        if transport == "pty":
            assert url == str(tmp_path / "amtron")
        client = await connect(url)
        try:
            v = await read_map(client, 11)
            assert (v["MAX_CURRENT_EVSE"], v["EVSE_STATE"]) == (32.0, 1)
            assert (v["MASTER_LOST_FALLBACK_CURRENT"], v["SETTING_FALLBACK_CURRENT"]) == (0, 0)
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
    if transport == "pty":
        assert not _lexists(tmp_path / "amtron")


async def test_surplus_sim_serves_n_boxes_from_device_id_10() -> None:
    proc, line = await _start_cli("--tcp", "127.0.0.1:0", "--boxes", "3")
    try:
        assert line.startswith("AMTRON simulator (11 kW, device ids 10, 11, 12) on "), line
        client = await connect(line.rsplit("MODBUS_PORT=", 1)[1].strip())
        try:
            for device_id in (10, 11, 12):
                assert (await read_map(client, device_id))["EVSE_STATE"] == 3  # a car at every box
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device-id", "999"], "device id must be 1..247"),
        (["--tcp", "localhost"], "expected HOST:PORT"),
        (["--tcp", "127.0.0.1:0", "--fallback-current", "3"], "fallback current must be 0, 1 or 6..32"),
        (["--boxes", "0"], "boxes must be 1..238"),
        (
            ["--boxes", "2", "--device-id", "5", "--tcp", "127.0.0.1:0"],
            "--boxes and --device-id exclude each other",
        ),
    ],
)
async def test_surplus_sim_refuses_bad_options(args: list[str], needle: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "surplus.cli", "sim", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert needle in err.decode()


async def test_surplus_sim_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "surplus.cli", "sim", "--tcp", f"127.0.0.1:{port}",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines() == [
        f"surplus sim: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
