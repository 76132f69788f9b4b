"""The AMTRON driver on the real bus, real pymodbus both ends, against the simulator.

Every test runs a :class:`SimulatorServer` on 127.0.0.1 (RTU over TCP) or on
an in-process pty pair, and the real :class:`ModbusBus` + :class:`AmtronCharger`.
Timeouts are shortened so failures cost tenths of a second; the heartbeat flood
test keeps the real 3 s cadence on the pty, since that is what it checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest

from surplus.chargers.amtron import AmtronCharger
from surplus.chargers.base import ChargerError
from surplus.clock import Clock, FakeClock, SystemClock
from surplus.modbus import registers as R
from surplus.modbus.base import BusError
from surplus.modbus.bus import BusConfig, ModbusBus
from surplus.sim.model import PROFILE_22KW, AmtronModel, DeviceProfile, EvProfile
from surplus.sim.server import SimulatorServer
from surplus.types import Command, EvseState, ReadGroup

pytestmark = pytest.mark.integration

TRANSPORTS = ["tcp", "pty"]
# A generous timeout so a loaded CI machine does not fail good reads; the tests about
# timeouts and probing pass their own short one (SHORT) so they stay quick.
FAST = {"timeout_s": 1.0, "retries": 1, "reconnect_interval_s": 0.2}
SHORT = {"timeout_s": 0.25}


@asynccontextmanager
async def line(
    models: Mapping[int, AmtronModel], transport: str = "tcp", **config: object
) -> AsyncIterator[tuple[SimulatorServer, ModbusBus]]:
    sim = SimulatorServer(models, transport=transport)  # type: ignore[arg-type]
    await sim.start()
    bus = ModbusBus(BusConfig(port=sim.url, **{**FAST, **config}), SystemClock())  # type: ignore[arg-type]
    try:
        await bus.start()
        yield sim, bus
    finally:
        await bus.close()
        await sim.stop()


def charger(bus: ModbusBus, clock: Clock | None = None, **kw: object) -> AmtronCharger:
    return AmtronCharger(bus, charger_id="garage", clock=clock or SystemClock(), **kw)  # type: ignore[arg-type]


def writes(model: AmtronModel, since: int = 0) -> list[tuple[str, object]]:
    return [(w.register, w.value) for w in model.record.writes[since:] if w.register != R.HEARTBEAT_EM.name]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_full_poll_reads_and_decodes_every_block(transport: str) -> None:
    model = AmtronModel(SystemClock(), ev=EvProfile(accept_delay_s=0.0))
    async with line({50: model}, transport) as (_, bus):
        amtron = charger(bus)
        await amtron.start()
        assert amtron.device_id == 50
        await amtron.execute(Command(charger_id="garage", current_a=10.0, release=True))
        await asyncio.sleep(0.3)
        state = await amtron.read_state(full=True)
        truth = model.values()
        # general information + configuration
        assert state.info.layout_version == 0x0103 and state.info.firmware_version == "5.22.3"
        assert state.info.serial_number == "SIM0000001" and state.info.article_number == "1320221"
        assert state.config.max_current_evse_a == 16.0 and state.config.phase_options_hw == 2
        assert state.config.phase_switching_pause_s == 90
        assert state.capabilities.phase_switching and state.capabilities.grid_phases == 3
        assert not state.capabilities.exact_6a_rejected
        # status, functions, diagnostics
        assert state.evse_state == EvseState.CHARGING and state.cp_state == 28
        assert state.charging_release and not state.locked and state.error_code == 0
        assert state.current_limit_a == 10.0 and state.signaled_current_a == 10.0
        # measurements, temperature, session, statistics
        assert 220 < state.voltage_l1_v < 240 and 220 < state.voltage_l3_v < 240
        assert state.current_l1_a == pytest.approx(10.0, abs=0.5)
        assert state.power_total_w == pytest.approx(3 * 230 * 10, rel=0.05)
        assert 20 < state.temperature_c < 60
        assert state.session_duration_s >= 0 and state.detected_phases == 3
        assert state.sessions_total == truth[R.CHARGING_SESSIONS_TOTAL.name] == 42
        assert state.energy_total_wh == pytest.approx(float(truth[R.CHARGED_ENERGY_TOTAL.name]) * 1000, abs=5)
        assert state.session_energy_wh == pytest.approx(
            float(truth[R.CHARGED_ENERGY_SESSION.name]) * 1000, abs=5
        )
        # a fast poll keeps the slow values of the last full one
        fast = await amtron.read_state()
        assert fast.sessions_total == 42 and fast.info == state.info and fast.read_at_s >= state.read_at_s
        await amtron.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_writes_take_effect_in_the_order_the_box_needs(transport: str) -> None:
    model = AmtronModel(SystemClock(), ev=EvProfile(accept_delay_s=0.0))
    async with line({50: model}, transport) as (_, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        await amtron.read_state()
        mark = len(model.record.writes)
        await amtron.execute(Command(charger_id="garage", current_a=8.0, release=True, phases=1))
        assert writes(model, mark) == [
            ("REQUESTED_PHASES", 1),
            ("CHARGING_CURRENT_EM", 8.0),
            ("CHARGING_RELEASE_EM", 1),
        ]
        assert model.em_current_a == 8.0 and model.release == 1 and model.requested_phases == 1
        mark = len(model.record.writes)
        await amtron.execute(Command(charger_id="garage", current_a=1.0, release=False, phases=3, lock=True))
        assert writes(model, mark) == [
            ("LOCK_EVSE", 1),
            ("CHARGING_RELEASE_EM", 0),
            ("REQUESTED_PHASES", 0),
            ("CHARGING_CURRENT_EM", 1.0),
        ]
        assert model.release == 0 and model.lock == 1 and model.requested_phases == 0
        await amtron.execute(Command(charger_id="garage", lock=False))
        assert model.lock == 0
        await amtron.stop()


@pytest.mark.parametrize("value", [0.0, -1.0, 5.995, 32.5, float("nan"), float("inf")])
async def test_execute_refuses_unsafe_currents_before_any_write(value: float) -> None:
    model = AmtronModel(SystemClock())
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        mark = len(model.record.writes)
        with pytest.raises(ChargerError, match="refusing current"):
            await amtron.execute(Command(charger_id="garage", current_a=value, release=True))
        with pytest.raises(ChargerError, match="refusing phases"):
            await amtron.execute(Command(charger_id="garage", release=True, phases=2))
        assert writes(model, mark) == []
        await amtron.stop()


@pytest.mark.parametrize(("transport", "interval_s", "flood_s"), [("pty", 3.0, 8.0), ("tcp", 1.0, 3.0)])
async def test_heartbeat_cadence_holds_during_a_read_flood(
    transport: str, interval_s: float, flood_s: float
) -> None:
    clock = SystemClock()
    model = AmtronModel(clock)
    async with line({50: model}, transport) as (sim, bus):
        sim.faults.reply_delay_s = 0.02  # every transaction holds the line a little
        amtron = charger(bus, device_id=50, heartbeat_interval_s=interval_s)
        await amtron.start()
        reads = 0

        async def flood() -> None:
            nonlocal reads
            while True:
                await amtron.read_state()
                reads += 1

        tasks = [asyncio.create_task(flood()) for _ in range(4)]
        await asyncio.sleep(flood_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await amtron.stop()
    beats = model.record.heartbeats
    # Four readers back to back, >= 3 block reads of >= 20 ms each per state: the line never rested.
    assert reads >= flood_s / 0.4 and model.record.reads >= 3 * reads
    assert len(beats) >= int(flood_s / interval_s)
    worst = model.record.worst_heartbeat_gap_s
    assert worst < 5.0
    assert worst < interval_s + 0.5  # late by at most about one in-flight transaction


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reconnects_after_the_port_vanishes_and_returns(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    model = AmtronModel(SystemClock())
    async with line({50: model}, transport) as (sim, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        await amtron.read_state()
        await sim.vanish()
        for _ in range(3):  # several failures while it is gone, all as ChargerError
            with pytest.raises(ChargerError):
                await amtron.read_state()
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)  # a few reconnect attempts against the missing port
        beats_before = len(model.record.heartbeats)
        await sim.restore()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if bus.connected:
                break
        state = await amtron.read_state()
        assert state.voltage_l1_v > 200
        assert bus.stats.reconnects >= 1
        await asyncio.sleep(0.05)
        assert len(model.record.heartbeats) > beats_before  # first thing after reconnecting
        await amtron.stop()
    bus_warnings = [
        r for r in caplog.records if r.name == "surplus.modbus.bus" and r.levelno >= logging.WARNING
    ]
    assert 1 <= len(bus_warnings) <= 2  # lost, then (maybe) "cannot open" once; never per attempt
    assert not [r for r in caplog.records if r.exc_info]


async def recovered(amtron: AmtronCharger, within_s: float = 5.0) -> None:
    """Poll until a read succeeds again (a late reply may still poison one or two reads)."""
    for _ in range(int(within_s / 0.1)):
        try:
            state = await amtron.read_state()
        except ChargerError:
            await asyncio.sleep(0.1)
            continue
        assert state.voltage_l1_v > 200
        return
    raise AssertionError(f"no recovery within {within_s} s")


async def test_timeouts_garbled_and_exception_replies_then_recovery() -> None:
    model = AmtronModel(SystemClock())
    async with line({50: model}, **SHORT) as (sim, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        sim.faults.reply_delay_s = 0.6  # longer than the 0.25 s timeout
        with pytest.raises(ChargerError, match=r"failed: .*(no answer within 0.25 s|unexpected reply)"):
            await amtron.read_state()
        assert bus.stats.timeouts >= 1
        sim.faults.reply_delay_s = 0.0
        await recovered(amtron)  # once the late replies have drained
        await asyncio.sleep(0.7)  # a second late reply (of the retry) may still be on its way
        await recovered(amtron)
        sim.faults.garble_replies = 1  # one bad CRC: the retry gets through
        assert (await amtron.read_state()).voltage_l1_v > 200
        sim.faults.garble_replies = 50
        with pytest.raises(ChargerError, match="failed"):
            await amtron.read_state()
        sim.faults.garble_replies = 0
        sim.faults.exception_replies, sim.faults.exception_code = 1, 4
        with pytest.raises(ChargerError, match=r"device failure \(exception 4\)"):
            await amtron.read_state()
        sim.faults.exception_replies, sim.faults.exception_code = 1, 6
        with pytest.raises(ChargerError, match=r"writing CHARGING_CURRENT_EM=10 A failed: .*exception 6"):
            await amtron.execute(Command(charger_id="garage", current_a=10.0))
        await recovered(amtron)
        assert bus.stats.errors >= 4
        await amtron.stop()


async def test_probing_finds_the_device_on_id_1(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="surplus.chargers.amtron")
    model = AmtronModel(SystemClock())
    async with line({1: model}, **SHORT) as (_, bus):
        amtron = charger(bus)
        await amtron.start()
        assert amtron.device_id == 1 and amtron.info is not None and amtron.info.device_id == 1
        assert any("answered on device id 1" in r.getMessage() for r in caplog.records)
        assert model.record.heartbeats  # the heartbeat goes to the id that answered
        await amtron.stop()


async def test_nothing_answering_is_one_line_and_start_can_be_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    model = AmtronModel(SystemClock())
    async with line({50: model}, **SHORT) as (sim, bus):
        sim.faults.silent = True
        amtron = charger(bus)
        with pytest.raises(ChargerError) as info:
            await amtron.start()
        message = str(info.value)
        assert "no AMTRON answered on device id 50 or 1" in message and "\n" not in message
        assert not [r for r in caplog.records if r.exc_info]
        sim.faults.silent = False
        await amtron.start()  # the caller's retry
        assert amtron.device_id == 50
        await amtron.stop()


async def test_a_missing_port_is_one_log_line_and_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bus = ModbusBus(BusConfig(port="/nonexistent/ttyUSB9", **FAST), SystemClock())  # type: ignore[arg-type]
    await bus.start()
    await asyncio.sleep(0.7)  # three reconnect attempts
    amtron = charger(bus, device_id=50)
    with pytest.raises(ChargerError, match=r"garage: /nonexistent/ttyUSB9: cannot open"):
        await amtron.start()
    await bus.close()
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "/nonexistent/ttyUSB9" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


async def test_recovery_from_error_200_writes_heartbeat_release_current() -> None:
    model_clock = FakeClock()
    model = AmtronModel(model_clock)
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50, heartbeat_interval_s=30.0)
        await amtron.start()
        model_clock.set(model_clock.now() + 11.0)  # no heartbeat for 11 s of the box's time
        state = await amtron.read_state()
        assert state.evse_state == EvseState.ERROR and state.error_code == 200
        mark = len(model.record.writes)
        await amtron.execute(Command(charger_id="garage", current_a=6.0, release=True))
        order = [w.register for w in model.record.writes[mark:]]
        assert order == ["HEARTBEAT_EM", "CHARGING_RELEASE_EM", "CHARGING_CURRENT_EM"]
        state = await amtron.read_state()
        assert state.error_code == 0 and state.evse_state == EvseState.IDLE
        await amtron.stop()


async def test_exact_6a_becomes_6_01_on_layout_1_0_2() -> None:
    model = AmtronModel(SystemClock(), profile=DeviceProfile(layout_version=0x0102))
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        assert amtron.capabilities is not None and amtron.capabilities.exact_6a_rejected
        state = await amtron.read_state(full=True)
        assert state.info.article_number == "" and state.signaled_current_a == 0.0  # not in 1.0.2
        await amtron.execute(Command(charger_id="garage", current_a=6.0, release=True))
        assert model.record.current_writes[-1][1] == pytest.approx(6.01, abs=1e-5)
        assert not model.record.refused_writes
        await amtron.execute(Command(charger_id="garage", current_a=7.0))
        assert model.record.current_writes[-1][1] == 7.0
        await amtron.stop()


async def test_phase_write_on_a_22kw_box_surfaces_exception_3() -> None:
    model = AmtronModel(SystemClock(), profile=PROFILE_22KW)
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        assert amtron.capabilities is not None and not amtron.capabilities.phase_switching
        assert amtron.capabilities.max_current_a == 32.0
        with pytest.raises(
            ChargerError, match=r"REQUESTED_PHASES=1p failed: .*illegal data value \(exception 3\)"
        ):
            await amtron.execute(Command(charger_id="garage", phases=1))
        assert model.requested_phases == 0
        await amtron.stop()


async def test_swapped_word_order_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="surplus.chargers.amtron")
    model = AmtronModel(SystemClock(), word_order="little")
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50)
        await amtron.start()
        await amtron.stop()
    assert any("word order looks swapped" in r.getMessage() for r in caplog.records)


async def test_two_boxes_share_one_line_with_their_own_heartbeats() -> None:
    a, b = AmtronModel(SystemClock()), AmtronModel(SystemClock(), profile=PROFILE_22KW)
    async with line({50: a, 11: b}, heartbeat_deadline_s=1.0, **SHORT) as (_, bus):
        one = AmtronCharger(
            bus, charger_id="one", clock=SystemClock(), device_id=50, heartbeat_interval_s=0.3
        )
        two = AmtronCharger(
            bus, charger_id="two", clock=SystemClock(), device_id=11, heartbeat_interval_s=0.3
        )
        await asyncio.gather(one.start(), two.start())
        s1, s2 = await asyncio.gather(one.read_state(), two.read_state())
        await asyncio.sleep(1.0)
        assert s1.capabilities.max_current_a == 16.0 and s2.capabilities.max_current_a == 32.0
        assert len(a.record.heartbeats) >= 3 and len(b.record.heartbeats) >= 3
        await one.stop()
        n = len(a.record.heartbeats)
        await asyncio.sleep(0.5)
        assert len(a.record.heartbeats) == n and len(b.record.heartbeats) > 3
        await two.stop()


async def test_bus_errors_are_bus_errors_not_crashes() -> None:
    model = AmtronModel(SystemClock())
    async with line({50: model}) as (_, bus):
        with pytest.raises(BusError, match="illegal data address"):
            await bus.read(50, 0x0104, 1)  # unmapped
        assert await bus.read(50, R.EVSE_STATE.address, 1) == [EvseState.IDLE]


async def test_a_box_that_would_charge_on_alone_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10 item 1: fallback 0 = the box keeps the last values when the heartbeat stops."""
    model = AmtronModel(SystemClock(), profile=DeviceProfile(master_lost_fallback_current_a=0))
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50)
        with caplog.at_level(logging.WARNING, logger="surplus.chargers.amtron"):
            await amtron.start()
            await amtron.stop()
            await amtron.start()  # a reconnect does not repeat it
        warned = [r.getMessage() for r in caplog.records if "heartbeat-loss fallback" in r.getMessage()]
        assert warned == [
            "garage: the box's heartbeat-loss fallback (0x030E) is 0: if surplus stops, a charging car goes "
            "on at the last current, also from the grid; set it to 1 (pause) with the configuration tool "
            "or with control.box_fallback_a: 1"
        ]
        assert [w for w in writes(model) if w[0] == R.SETTING_FALLBACK_CURRENT.name] == []  # not opted in
        await amtron.stop()


@pytest.mark.parametrize("wanted", [1, 10])
async def test_box_fallback_a_is_written_and_read_back(caplog: pytest.LogCaptureFixture, wanted: int) -> None:
    model = AmtronModel(SystemClock(), profile=DeviceProfile(master_lost_fallback_current_a=0))
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50, box_fallback_a=wanted)
        with caplog.at_level(logging.INFO, logger="surplus.chargers.amtron"):
            await amtron.start()
        assert writes(model) == [(R.SETTING_FALLBACK_CURRENT.name, wanted)]
        state = await amtron.read_state(full=True)
        assert state.config.master_lost_fallback_current_a == wanted  # 0x030E, the read-only mirror
        messages = [r.getMessage() for r in caplog.records]
        assert f"garage: heartbeat-loss fallback set to {wanted} (was 0)" in messages
        assert not [m for m in messages if "is 0: if surplus stops" in m]
        await amtron.stop()
        await amtron.start()  # already set: no second write
        assert len(writes(model)) == 1
        await amtron.stop()


async def test_box_fallback_a_on_a_layout_without_the_setting_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = AmtronModel(
        SystemClock(), profile=DeviceProfile(layout_version=0x0102, master_lost_fallback_current_a=0)
    )
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, device_id=50, box_fallback_a=1)
        with caplog.at_level(logging.WARNING, logger="surplus.chargers.amtron"):
            await amtron.start()
        assert writes(model) == []
        assert any("layout 1.0.2 has no writable fallback (0x073A)" in r.getMessage() for r in caplog.records)
        await amtron.stop()


async def test_each_read_group_carries_its_own_time_and_a_state_change_reads_the_rest() -> None:
    """Issue 10 item 8: values read at different times say so; evseState 5 never meets an old cpState."""
    clock = FakeClock()
    model = AmtronModel(SystemClock())  # no car yet
    async with line({50: model}) as (_, bus):
        amtron = charger(bus, clock, device_id=50, heartbeat_interval_s=1.0)
        await amtron.start()
        first = await amtron.read_state()
        assert {g: first.read_at(g) for g in ReadGroup} == dict.fromkeys(ReadGroup, first.read_at_s)
        clock.set(clock.now() + 2.0)
        s = await amtron.read_state()  # measurements only
        assert s.read_at(ReadGroup.MEASUREMENTS) == first.read_at_s + 2.0
        assert s.read_at(ReadGroup.CONTROL) == s.read_at(ReadGroup.CONFIGURATION) == first.read_at_s
        model.plug_in(EvProfile())  # the EVSE state moves: the CP state is read with it
        clock.set(clock.now() + 1.0)
        s = await amtron.read_state()
        assert (s.evse_state, s.cp_state) == (model.evse_state, model.cp_state)
        assert s.read_at(ReadGroup.CONTROL) == s.read_at_s == first.read_at_s + 3.0
        clock.set(clock.now() + 1.0)
        s = await amtron.read_state()
        assert s.read_at(ReadGroup.CONTROL) == first.read_at_s + 3.0  # not due: 5 s cadence
        await amtron.execute(Command(charger_id="garage", current_a=8.0, release=True))
        clock.set(clock.now() + 0.5)
        s = await amtron.read_state()  # a write makes the control read due at once
        assert s.read_at(ReadGroup.CONTROL) == s.read_at_s and s.current_limit_a == 8.0
        clock.set(clock.now() + 5.0)
        s = await amtron.read_state()
        assert s.read_at(ReadGroup.CONTROL) == s.read_at_s  # every 5 s
        assert s.energy_total_wh == pytest.approx(model.energy_total_wh, abs=1.0)  # the counter with it
        assert s.read_at(ReadGroup.CONFIGURATION) == first.read_at_s
        await amtron.stop()
