"""The SunSpec meter against a real pymodbus Modbus TCP server on 127.0.0.1.

The device is :mod:`tests.sunspec_server`: register images built from the
SunSpec model layouts, served by pymodbus's ``SimDevice`` datastore. The meter's
clock is a FakeClock (it only stamps readings and paces reconnects); network
waits are real but short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from surplus_plugins import sunspec_meter
from surplus_plugins.sunspec_decode import (
    INVERTER_MODELS,
    METER_MODELS,
    Model,
    Point,
    SunSpecError,
    plan_reads,
)
from surplus_plugins.sunspec_meter import SunSpecMeter, make_sunspec

from surplus.clock import FakeClock
from surplus.meter import MeterEnv
from surplus.options import OptionError
from tests.sunspec_server import (
    NOT_IMPLEMENTED_FLOAT32,
    NOT_IMPLEMENTED_INT16,
    SunSpecImage,
    SunSpecServer,
    common,
    float_inverter,
    float_meter,
    int_inverter,
    int_meter,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# Calls that should succeed get a generous timeout (a loaded CI machine can stall);
# only the test of a silent device uses a short one.
TIMEOUT_S = 3.0


def build(port: int, clock: FakeClock | None = None, **options: Any) -> SunSpecMeter:
    env = MeterEnv(clock=clock or FakeClock())
    meter = make_sunspec("grid", {"host": "127.0.0.1", "port": port, "timeout_s": TIMEOUT_S, **options}, env)
    assert isinstance(meter, SunSpecMeter)
    return meter


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Mapping[int, SunSpecImage]], Any]]:
    servers: list[SunSpecServer] = []

    async def start(units: Mapping[int, SunSpecImage]) -> SunSpecServer:
        server = SunSpecServer(units)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


# --- readings -------------------------------------------------------------------


async def test_int_meter_203_with_negative_scale_factor(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203, w=-12345, w_sf=-2)])})
    clock = FakeClock(start=500.0)
    meter = build(server.port, clock)
    with caplog.at_level(logging.INFO, logger="surplus_plugins.sunspec_meter"):
        await meter.start()
    found = [r.getMessage() for r in caplog.records if "SunSpec on" in r.getMessage()]
    assert len(found) == 1
    assert "unit 1 at 40000: common(1), meter(203)" in found[0]
    reading = await meter.read()
    assert reading.meter_id == "grid"
    assert reading.grid_power_w == -123.45  # exporting 123.45 W
    assert reading.pv_power_w is None
    assert reading.read_at_s == 500.0
    await meter.stop()


@pytest.mark.parametrize(("model_id", "w", "sf", "expected"), [(201, 750, 0, 750.0), (202, 35, 2, 3500.0)])
async def test_other_int_meter_models(serve: Any, model_id: int, w: int, sf: int, expected: float) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(model_id, w=w, w_sf=sf)])})
    meter = build(server.port)
    assert (await meter.read()).grid_power_w == expected  # read() discovers by itself
    await meter.stop()


async def test_float_meter_213_with_float_inverter(serve: Any) -> None:
    image = SunSpecImage([common(), float_inverter(113, w=4200.25), common(), float_meter(213, w=1500.5)])
    server = await serve({1: image})
    meter = build(server.port)
    await meter.start()
    reading = await meter.read()
    assert (reading.grid_power_w, reading.pv_power_w) == (1500.5, 4200.25)
    image.set_float_w(213, -3000.3)
    image.set_float_w(113, 5100.0)
    reading = await meter.read()
    assert (reading.grid_power_w, reading.pv_power_w) == (-3000.3, 5100.0)
    await meter.stop()


async def test_marker_at_register_0_is_found_automatically(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203, w=321, w_sf=0)], base=0)})
    meter = build(server.port)
    await meter.start()
    assert (
        meter.meter_point is not None and meter.meter_point.model.address == 2 + 68
    )  # after SunS and common(1)
    assert (await meter.read()).grid_power_w == 321.0
    await meter.stop()


async def test_marker_at_50000_and_an_explicit_base_address(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203, w=42, w_sf=1)], base=50000)})
    meter = build(server.port, base_address=50000)
    await meter.start()
    before = len(server.requests)
    assert (await meter.read()).grid_power_w == 420.0
    assert len(server.requests) == before + 1
    await meter.stop()


async def test_fronius_layout_meter_on_its_own_unit(serve: Any) -> None:
    inverter = SunSpecImage([common("Fronius"), int_inverter(103, w=5432, w_sf=0)])
    meter_unit = SunSpecImage([common("Fronius", "Smart Meter"), int_meter(203, w=-2500, w_sf=0)])
    server = await serve({1: inverter, 200: meter_unit})
    meter = build(server.port, device_id=1, meter_device_id=200)
    await meter.start()
    before = len(server.requests)
    reading = await meter.read()
    assert (reading.grid_power_w, reading.pv_power_w) == (-2500.0, 5432.0)
    assert sorted(unit for unit, _, _ in server.reads_since(before)) == [1, 200]  # one read per unit
    await meter.stop()


async def test_inverter_and_meter_on_one_unit_take_one_transaction(serve: Any) -> None:
    # Inverter and meter models back to back: W of both within one 125-register read.
    image = SunSpecImage([common(), int_inverter(103, w=-1, w_sf=1), int_meter(203, w=150, w_sf=1)])
    server = await serve({1: image})
    meter = build(server.port)
    await meter.start()
    assert len(meter.spans) == 1
    before = len(server.requests)
    reading = await meter.read()
    assert len(server.requests) == before + 1
    assert reading.grid_power_w == 1500.0
    assert reading.pv_power_w == -10.0  # 0xFFFF is -1 for int16 W, not "not implemented"
    await meter.stop()


async def test_values_change_between_reads(serve: Any) -> None:
    image = SunSpecImage([common(), int_meter(203, w=1000, w_sf=0)])
    server = await serve({1: image})
    meter = build(server.port)
    assert (await meter.read()).grid_power_w == 1000.0
    image.set_int_w(203, -32767, -1)
    assert (await meter.read()).grid_power_w == -3276.7
    await meter.stop()


@pytest.mark.parametrize("float_model", [False, True])
async def test_invert_flips_the_sign(serve: Any, float_model: bool) -> None:
    model = float_meter(213, w=800.0) if float_model else int_meter(203, w=800, w_sf=0)
    server = await serve({1: SunSpecImage([common(), model])})
    plain, inverted = build(server.port), build(server.port, invert=True)
    assert (await plain.read()).grid_power_w == 800.0
    assert (await inverted.read()).grid_power_w == -800.0
    await plain.stop()
    await inverted.stop()


# --- failures -------------------------------------------------------------------


async def test_no_meter_model_is_a_clear_error_at_start(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_inverter(103, w=100, w_sf=0)])})
    meter = build(server.port)
    with pytest.raises(SunSpecError) as caught:
        await meter.start()
    text = one_line(caught.value)
    assert "no SunSpec meter model (201-204, 211-214)" in text
    assert "common(1), inverter(103)" in text
    await meter.stop()


async def test_no_marker_names_every_address_tried(serve: Any) -> None:
    image = SunSpecImage([common(), int_meter(203)])
    image.words[0:2] = [0x1234, 0x5678]  # something else lives at 40000
    server = await serve({1: image})
    meter = build(server.port)
    with pytest.raises(SunSpecError) as caught:
        await meter.start()
    text = one_line(caught.value)
    assert "no SunSpec marker 'SunS' at 40000 (found 0x1234 0x5678)" in text
    assert "0 (illegal data address" in text and "50000 (illegal data address" in text
    await meter.stop()


async def test_absent_meter_unit_is_a_clear_error(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_inverter(103)])})
    meter = build(server.port, meter_device_id=200)
    with pytest.raises(SunSpecError) as caught:
        await meter.start()
    assert "unit 200" in one_line(caught.value)
    assert "gateway target failed to respond (Modbus exception 11)" in str(caught.value)
    await meter.stop()


@pytest.mark.parametrize(
    ("model", "raw", "problem"),
    [
        (203, [NOT_IMPLEMENTED_INT16], "W is not implemented (0x8000)"),
        (213, NOT_IMPLEMENTED_FLOAT32, "W is not implemented (float NaN)"),
    ],
)
async def test_not_implemented_meter_power_is_an_error(
    serve: Any, model: int, raw: list[int], problem: str
) -> None:
    image = SunSpecImage([common(), int_meter(203, w=5) if model == 203 else float_meter(213, w=5.0)])
    server = await serve({1: image})
    meter = build(server.port)
    assert (await meter.read()).grid_power_w == 5.0
    image.set_raw_w(model, raw)
    with pytest.raises(SunSpecError) as caught:
        await meter.read()
    assert one_line(caught.value) == f"meter model {model} on unit 1: {problem}"
    await meter.stop()


async def test_not_implemented_scale_factor_is_an_error(serve: Any) -> None:
    image = SunSpecImage([common(), int_meter(203, w=5, w_sf=0)])
    image.set_int_w(203, 5, -32768)  # W_SF 0x8000
    server = await serve({1: image})
    meter = build(server.port)
    with pytest.raises(SunSpecError, match=r"W_SF is not implemented \(0x8000\)"):
        await meter.read()
    image.set_int_w(203, 5, 11)
    with pytest.raises(SunSpecError, match=r"W_SF 11 is outside -10\.\.10"):
        await meter.read()
    await meter.stop()


async def test_not_implemented_pv_power_is_none_and_grid_still_reads(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    image = SunSpecImage(
        [common(), int_inverter(103, w=2000, w_sf=0), common(), int_meter(203, w=-700, w_sf=0)]
    )
    server = await serve({1: image})
    meter = build(server.port)
    assert (await meter.read()).pv_power_w == 2000.0
    image.set_raw_w(103, [NOT_IMPLEMENTED_INT16])
    with caplog.at_level(logging.INFO, logger="surplus_plugins.sunspec_meter"):
        for _ in range(3):
            reading = await meter.read()
            assert (reading.grid_power_w, reading.pv_power_w) == (-700.0, None)
        image.set_int_w(103, 1999, 0)
        assert (await meter.read()).pv_power_w == 1999.0
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [
        "meter grid: no PV power: inverter model 103 on unit 1: W is not implemented (0x8000)",
        "meter grid: PV power readable again",
    ]
    await meter.stop()


async def test_modbus_exception_reply_is_one_line_and_the_connection_stays(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203, w=10, w_sf=0)])})
    meter = build(server.port)
    await meter.start()
    server.exception_code = 4
    with pytest.raises(SunSpecError) as caught:
        await meter.read()
    assert one_line(caught.value).endswith("device failure (Modbus exception 4)")
    server.exception_code = None
    assert (await meter.read()).grid_power_w == 10.0
    await meter.stop()


async def test_connection_refused(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203)])})
    await server.stop()
    meter = build(server.port)
    with caplog.at_level(logging.DEBUG, logger="pymodbus.logging"), pytest.raises(SunSpecError) as caught:
        await meter.start()
    assert one_line(caught.value) == f"127.0.0.1:{server.port}: cannot connect (connection refused)"
    assert not [r for r in caplog.records if "Failed to connect" in r.getMessage()]  # said once, by us
    await meter.stop()


async def test_silent_device_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # takes the request, never answers
        await reader.read(1024)
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        meter = build(port, timeout_s=0.3)
        with pytest.raises(SunSpecError) as caught:
            await meter.start()
        assert one_line(caught.value) == f"127.0.0.1:{port} unit 1: read 4 @40000: no answer within 0.3 s"
        await meter.stop()
    finally:
        listener.close()


async def test_unanswered_requests_pace_the_retries() -> None:
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.read(1024):
            pass
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    clock = FakeClock()
    try:
        meter = build(port, clock, timeout_s=0.2, reconnect_s=10.0)
        with pytest.raises(SunSpecError) as first:
            await meter.start()
        clock.set(clock.now() + 9.0)
        with pytest.raises(SunSpecError) as again:
            await meter.read()  # at once, without a new connection
        assert str(again.value) == str(first.value)
        assert connections == 1
        clock.set(clock.now() + 1.0)
        with pytest.raises(SunSpecError):
            await meter.read()
        assert connections == 2
        await meter.stop()
    finally:
        listener.close()


async def test_a_read_cancelled_by_the_callers_deadline_leaves_no_half_open_connection() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        meter = build(port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(meter.start(), 0.2)
        assert not meter.connected
        await meter.stop()
    finally:
        listener.close()


async def test_chain_ending_without_a_length_word(serve: Any) -> None:
    image = SunSpecImage([common(), float_meter(213, w=77.0)], end_length=False)
    server = await serve({1: image})
    meter = build(server.port)
    assert (await meter.read()).grid_power_w == 77.0
    await meter.stop()


async def test_server_restart_fails_one_read_then_recovers(serve: Any) -> None:
    image = SunSpecImage([common(), int_meter(203, w=900, w_sf=0)])
    server = await serve({1: image})
    clock = FakeClock()
    meter = build(server.port, clock, reconnect_s=5.0)
    assert (await meter.read()).grid_power_w == 900.0
    discovery_and_read = len(server.requests)

    await server.stop()
    for _ in range(100):  # the client learns of the closed socket on a later turn of the loop
        if not meter.connected:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(SunSpecError) as caught:
        await meter.read()
    first = one_line(caught.value)
    assert first in (
        f"127.0.0.1:{server.port}: connection lost",
        f"127.0.0.1:{server.port}: cannot connect (connection refused)",
    )
    # Within reconnect_s the same line comes back at once, without touching the network.
    clock.set(clock.now() + 1.0)
    with pytest.raises(SunSpecError):
        await meter.read()

    await server.start()  # same port
    assert server.port == meter.port
    image.set_int_w(203, 950, 0)
    clock.set(clock.now() + 5.0)
    reading = await meter.read()
    assert reading.grid_power_w == 950.0
    # The model chain was kept: after reconnecting, only the read itself.
    assert len(server.requests) == discovery_and_read + 1
    await meter.stop()


async def test_stop_twice_and_read_after_stop(serve: Any) -> None:
    server = await serve({1: SunSpecImage([common(), int_meter(203, w=1, w_sf=0)])})
    meter = build(server.port)
    await meter.start()
    await meter.stop()
    await meter.stop()
    assert (await meter.read()).grid_power_w == 1.0  # reconnects
    await meter.stop()


# --- pure parts ------------------------------------------------------------------


def test_plan_reads_merges_only_close_points_on_one_unit() -> None:
    meter = Point("meter", 1, Model(203, 40121, 105), METER_MODELS[203])
    near = Point("inverter", 1, Model(103, 40069, 50), INVERTER_MODELS[103])
    far = Point("inverter", 1, Model(103, 41000, 50), INVERTER_MODELS[103])
    other_unit = Point("inverter", 2, Model(103, 40069, 50), INVERTER_MODELS[103])
    (one,) = plan_reads([meter, near])
    assert (one.unit, one.start, one.count) == (1, 40083, 40143 - 40083 + 1)
    assert len(plan_reads([meter, far])) == 2
    assert len(plan_reads([meter, other_unit])) == 2


def test_registers_the_sunspec_type() -> None:
    registered: dict[str, Any] = {}
    about: dict[str, Any] = {}
    sunspec_meter.surplus_register_meters(
        lambda name, factory, **kw: (registered.setdefault(name, factory), about.update(kw))
    )
    assert registered == {"sunspec": make_sunspec}
    assert about["options"]["port"] == 502 and "SunSpec" in about["summary"]


@pytest.mark.parametrize(
    ("options", "option", "text"),
    [
        ({}, "host", "required"),
        ({"host": ""}, "host", "expected a host name"),
        ({"host": "a b"}, "host", "expected a host name"),
        ({"host": "h", "port": 0}, "port", "below the minimum 1"),
        ({"host": "h", "port": "502"}, "port", "expected a whole number"),
        ({"host": "h", "device_id": 256}, "device_id", "above the maximum 255"),
        ({"host": "h", "meter_device_id": "200"}, "meter_device_id", "expected a whole number"),
        ({"host": "h", "base_address": "auto"}, "base_address", "expected a whole number"),
        ({"host": "h", "invert": "yes"}, "invert", "expected true or false"),
        ({"host": "h", "timeout_s": 0}, "timeout_s", "below the minimum"),
        ({"host": "h", "reconnect_s": -1}, "reconnect_s", "below the minimum"),
        ({"hots": "h"}, "hots", "did you mean 'host'"),
    ],
)
def test_option_errors_name_the_option(options: dict[str, Any], option: str, text: str) -> None:
    with pytest.raises(OptionError) as caught:
        make_sunspec("grid", options, MeterEnv(clock=FakeClock()))
    assert caught.value.option == option
    assert text in str(caught.value)
    assert str(caught.value).startswith(f"{option}: ")


def test_defaults() -> None:
    meter = make_sunspec("grid", {"host": "10.0.0.5"}, MeterEnv(clock=FakeClock()))
    assert isinstance(meter, SunSpecMeter)
    assert (meter.port, meter.device_id, meter.meter_device_id) == (502, 1, 1)
    assert (meter.base_address, meter.invert, meter.timeout_s, meter.reconnect_s) == (None, False, 2.0, 5.0)
