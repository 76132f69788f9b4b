"""The control loop on a fake clock: the real driver and governor over the in-memory model bus."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from typing import Any

import pytest

from surplus.api import Override
from surplus.chargers.amtron import AmtronCharger
from surplus.clock import FakeClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller, merge_override
from surplus.meter import MeterEnv
from surplus.modbus import codec
from surplus.modbus import registers as R
from surplus.plugins import builtin_strategy_infos, collect_meters, collect_strategies, make_plugin_manager
from surplus.rpc_health import meter_health
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, DeviceProfile, EvProfile
from surplus.strategy import StrategyContext, StrategyInfo
from surplus.types import Decision, MeterReading, Outcome, PauseKind, Snapshot, Source

from .loop_support import assert_governor_rules_held, build_controller


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_a_simulated_hour_of_the_real_loop_runs_on_the_fake_clock(clock: FakeClock) -> None:
    """An hour of 1 s ticks; bench/loop_hour.py prints how long it takes (about 1 s here)."""
    model = AmtronModel(clock, ev=EvProfile(soc=0.2, capacity_wh=80_000))
    controller, bus = build_controller(clock, model, fixed_current_a=10)
    energy_at_start = model.energy_total_wh
    wall = time.perf_counter()
    task = asyncio.ensure_future(controller.run(duration_s=3600))
    await clock.advance(3601)
    await task
    elapsed = time.perf_counter() - wall
    await bus.close()
    # Not a timing assertion: a generous bound that only a real sleep or a hang would break.
    assert elapsed < 20.0, f"a simulated hour took {elapsed:.2f} s of wall time"
    assert controller.ticks >= 3500
    rec = model.record
    assert rec.worst_heartbeat_gap_s <= 3.0 + 1e-9
    assert model.error_code == 0
    written = [w.value for w in rec.writes if w.register == "CHARGING_CURRENT_EM"]
    assert 10.0 in written
    # 10 A on three phases at 230 V for most of an hour: about 6.9 kWh.
    assert 6000 < model.energy_total_wh - energy_at_start < 7200
    assert_governor_rules_held(rec)


async def test_shutdown_leaves_the_safe_state_and_stops_the_heartbeat_last(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=12)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(30)
    assert model.evse_state == 5
    controller.stop()
    await clock.advance(10)
    await task
    writes = model.record.writes
    last_release = [w for w in writes if w.register == "CHARGING_RELEASE_EM"][-1]
    assert last_release.value == 0
    # No heartbeat after the safe-state write... and no further beats once stopped.
    beats_after = [t for t in model.record.heartbeats if t > last_release.at_s]
    assert len(beats_after) <= 1
    n = len(model.record.heartbeats)
    await clock.advance(20)
    assert len(model.record.heartbeats) == n
    await bus.close()


class _FailsLater:
    """Charges at 10 A, then starts raising at ``fail_at_s``."""

    name = "fixed"

    def __init__(self, fail_at_s: float) -> None:
        self.fail_at_s = fail_at_s

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        if ctx.now_s >= self.fail_at_s:
            raise RuntimeError("boom")
        return Decision(
            charger_id=ctx.charger_id, source=Source.STRATEGY, charge=True, current_a=10, reason="ok"
        )


@pytest.mark.parametrize(("fallback", "current_a", "release"), [("pause", 10.0, 0), ("hold_min", 6.0, 1)])
async def test_a_failing_strategy_is_isolated_and_falls_back(
    clock: FakeClock, fallback: str, current_a: float, release: int, caplog: pytest.LogCaptureFixture
) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    strategy = _FailsLater(clock.now() + 30)
    controller, bus = build_controller(clock, model, strategy=strategy, fallback=fallback)
    with caplog.at_level(logging.ERROR):
        task = asyncio.ensure_future(controller.run(duration_s=90))
        await clock.advance(91)
        await task
    await bus.close()
    assert controller.ticks >= 89  # the loop kept going
    failures = [r for r in caplog.records if "strategy fixed failed" in r.getMessage()]
    assert len(failures) == 1, "one log line per failure streak, not one per tick"
    record = controller.last_decision("wallbox")
    assert record is not None and record.decision.source is Source.FALLBACK
    writes = [w for w in model.record.writes if w.at_s >= strategy.fail_at_s and w.register != "HEARTBEAT_EM"]
    # the fallback acted before shutdown: hold_min lowers to 6 A, pause opens the release
    first = writes[0]
    if fallback == "hold_min":
        assert (first.register, first.value) == ("CHARGING_CURRENT_EM", current_a)
    else:
        assert (first.register, first.value) == ("CHARGING_RELEASE_EM", release)
        assert first.at_s < strategy.fail_at_s + 2
    assert_governor_rules_held(model.record)


async def test_override_applies_holds_and_expires(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=8)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(20)
    verdict = await controller.set_override("wallbox", Override(current_a=14, until_s=clock.now() + 60))
    assert verdict.outcome in (Outcome.APPLIED, Outcome.SCHEDULED)
    await clock.advance(30)
    assert model.em_current_a == 14.0
    await clock.advance(40)  # expired: the strategy's 8 A returns
    assert controller.get_override("wallbox") is None
    assert model.em_current_a == 8.0
    controller.stop()
    await clock.advance(10)
    await task
    await bus.close()
    assert_governor_rules_held(model.record)


async def test_a_refused_override_changes_nothing(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=8)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(20)
    writes = len(model.record.writes)
    verdict = await controller.set_override("wallbox", Override(current_a=math.nan))
    assert verdict.outcome is Outcome.REFUSED
    assert controller.get_override("wallbox") is None
    assert len(model.record.writes) == writes
    controller.stop()
    await clock.advance(10)
    await task
    await bus.close()


async def test_an_override_before_the_first_reading_is_refused_by_name(clock: FakeClock) -> None:
    # The window a CI run found: the box's driver has started, its first reading is not in yet.
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=8)

    async def on_the_clock(step: Any) -> Any:
        task = asyncio.ensure_future(step)
        while not task.done():
            await clock.advance(0.1)
        return task.result()

    before = await on_the_clock(controller.set_override("wallbox", Override(current_a=14)))
    assert before.outcome is Outcome.REFUSED
    assert before.reasons == ("charger wallbox is not connected: no connection yet",)
    await on_the_clock(controller.start())
    assert "wallbox" not in controller.coordinator.snapshot.chargers
    writes = len(model.record.writes)
    for override in (Override(current_a=14), Override(charge=False)):
        verdict = await on_the_clock(controller.set_override("wallbox", override))
        assert verdict.outcome is Outcome.REFUSED
        assert verdict.reasons == ("charger wallbox is not connected: no reading yet",)
    assert controller.get_override("wallbox") is None
    assert len(model.record.writes) == writes
    await on_the_clock(controller.tick())  # the first reading: now it is governed
    verdict = await on_the_clock(controller.set_override("wallbox", Override(current_a=14)))
    assert verdict.outcome in (Outcome.APPLIED, Outcome.SCHEDULED)
    await on_the_clock(controller.shutdown())
    await bus.close()


async def test_mode_switch_to_off_pauses_and_unknown_modes_are_refused(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=10)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(20)
    with pytest.raises(ValueError, match="unknown mode"):
        controller.set_mode("wallbox", "turbo")
    with pytest.raises(ValueError, match="unknown charger"):
        controller.set_mode("garage", "off")
    controller.set_mode("wallbox", "off")
    await clock.advance(400)  # the strategy's pause waits for the 5-minute pause/resume spacing at most
    assert model.evse_state != 5
    controller.stop()
    await clock.advance(10)
    await task
    await bus.close()


def test_merge_override_replaces_only_what_it_sets() -> None:
    d = Decision(charger_id="w", source=Source.STRATEGY, charge=True, current_a=10, phases=3, reason="pv")
    assert merge_override(d, None) is d
    m = merge_override(d, Override(phases=1, reason="rpc"))
    assert (m.charge, m.current_a, m.phases, m.source, m.reason) == (True, 10, 1, Source.OVERRIDE, "rpc; pv")
    # Only the phases are the person's: starting and stopping stay the strategy's (and bound by its rules).
    assert m.person_decides("phases") and not m.person_decides("charge") and not m.person_decides("lock")
    p = merge_override(d, Override(charge=False, pause_kind=PauseKind.SOFT))
    assert (p.charge, p.pause_kind) == (False, PauseKind.SOFT) and p.person_decides("charge")
    c = merge_override(dataclass_replace(d, charge=False), Override(current_a=16))
    assert (c.charge, c.current_a) == (True, 16) and c.person_decides("charge")


def dataclass_replace(obj: Any, **kw: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **kw)


async def test_meter_readings_enter_the_snapshot_with_their_age(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    pm = make_plugin_manager(load_entrypoints=False)
    meter = collect_meters(pm)["simulated"](
        "grid", {"seed": 3}, MeterEnv(clock=clock, charger_power_w=lambda: 0.0)
    )
    controller, bus = build_controller(clock, model, fixed_current_a=10, meters=[meter])
    task = asyncio.ensure_future(controller.run())
    await clock.advance(5)
    snap = controller.snapshot()
    assert "grid" in snap.meters and snap.grid_power_w is not None
    assert snap.meters["grid"].age_s == pytest.approx(0.0, abs=1.0)
    assert snap.chargers["wallbox"].state is not None
    controller.stop()
    await clock.advance(10)
    await task
    await bus.close()


class _BrokenMeter:
    meter_id = "grid"

    def __init__(self) -> None:
        self.reads = 0

    async def start(self) -> None:
        raise OSError("meter offline")

    async def read(self) -> MeterReading:
        self.reads += 1
        raise OSError("meter offline")

    async def stop(self) -> None:
        return None


async def test_a_broken_meter_is_isolated(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    meter = _BrokenMeter()
    controller, bus = build_controller(clock, model, fixed_current_a=9, meters=[meter])
    with caplog.at_level(logging.WARNING):
        task = asyncio.ensure_future(controller.run(duration_s=30))
        await clock.advance(31)
        await task
    await bus.close()
    assert meter.reads >= 29 and controller.ticks >= 29
    assert model.em_current_a == 9.0  # the fixed strategy does not need the meter
    assert len([r for r in caplog.records if "meter grid: read failed" in r.getMessage()]) == 1


class _PrefixedMeter(_BrokenMeter):
    """A plugin whose messages already name the meter, as the built-in ones do."""

    async def read(self) -> MeterReading:
        self.reads += 1
        raise OSError("meter grid: http://127.0.0.1:9/x: connection refused")


async def test_meter_errors_name_the_meter_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, meters=[_PrefixedMeter()])
    with caplog.at_level(logging.WARNING):
        task = asyncio.ensure_future(controller.run(duration_s=3))
        await clock.advance(15)  # the run, then the shutdown's wait for the 5 s spacing
        await task
    await bus.close()
    lines = [r.getMessage() for r in caplog.records if "read failed" in r.getMessage()]
    assert lines == ["meter grid: read failed: http://127.0.0.1:9/x: connection refused"]
    # Never read: still in the snapshot, with why and no numbers, so getMeters can show it.
    never = controller.snapshot().meters["grid"]
    assert never.error == "http://127.0.0.1:9/x: connection refused"
    assert math.isnan(never.grid_power_w) and never.age_s == math.inf
    assert controller.snapshot().grid_power_w is None


class _HangingMeter(_BrokenMeter):
    """A meter whose read never returns (a stalled HTTP server, a half-open socket)."""

    async def start(self) -> None:
        return None

    async def read(self) -> MeterReading:
        self.reads += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hanging_meter_never_slows_the_tick(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10 item 7: the meter is read on its own cadence; the 1 s tick goes on without it."""
    model = AmtronModel(clock, ev=EvProfile())
    meter = _HangingMeter()
    controller, bus = build_controller(clock, model, meters=[meter], mode="pv", fallback="hold_min")
    with caplog.at_level(logging.WARNING):
        task = asyncio.ensure_future(controller.run(duration_s=60))
        await clock.advance(75)  # 3 s for the first round of meter reads at start, the run, the shutdown
        await task
    await bus.close()
    assert controller.ticks >= 60  # one tick a second, as without a meter
    assert 19 <= meter.reads <= 22  # each read given up after 3 s, then the next one
    lines = [r.getMessage() for r in caplog.records if "meter grid: read failed" in r.getMessage()]
    assert lines == ["meter grid: read failed: no answer within 3 s"]
    record = controller.last_decision("wallbox")
    assert record is not None and record.strategy == "fallback"
    assert record.decision.reason == "fallback hold minimum: no fresh grid-meter reading"
    assert not [w for w in model.record.writes if w.register == "CHARGING_RELEASE_EM" and w.value == 1]
    assert model.record.worst_heartbeat_gap_s <= 3.0 + 1e-9  # the bus owner never waited for the meter
    assert_governor_rules_held(model.record)


async def test_a_stale_meter_stops_only_the_modes_that_need_it(clock: FakeClock) -> None:
    """A schedule's plan needs no meter (strategies say so with ``needs_meter``): with the meter
    down it charges its window on, only its sun part is off; pv falls back."""
    from surplus_plugins.schedule import make_schedule

    model = AmtronModel(clock, ev=EvProfile())  # fake wall time starts 2025-11-24 16:00 UTC
    plan = make_schedule({"timezone": "UTC", "windows": [{"start": "12:00", "end": "20:00", "current_a": 8}]})
    controller, bus = build_controller(clock, model, meters=[_BrokenMeter()], strategy=plan, mode="schedule")
    task = asyncio.ensure_future(controller.run(duration_s=30))
    await clock.advance(31)
    await task
    record = controller.last_decision("wallbox")
    assert record is not None and record.strategy == "schedule", record
    assert record.decision.charge and record.decision.current_a == 8
    assert record.decision.reason.startswith("schedule: cheap window 12:00-20:00, at least 8 A")
    assert 8.0 in [w.value for w in model.record.writes if w.register == "CHARGING_CURRENT_EM"]
    # Its sun part reads the meter (the plugin says uses_meter): health says it runs degraded.
    assert meter_health(controller)[1] == [
        "wallbox: mode schedule needs the meters: grid error: meter offline"
    ]
    controller.set_mode("wallbox", "pv")
    task = asyncio.ensure_future(controller.run(duration_s=5))
    await clock.advance(15)  # the run, then the shutdown's wait for the 5 s spacing
    await task
    record = controller.last_decision("wallbox")
    assert record is not None and record.strategy == "fallback"
    assert record.decision.reason == "fallback pause: no fresh grid-meter reading"
    await bus.close()
    assert_governor_rules_held(model.record)


async def test_a_mode_that_never_reads_the_meter_is_not_degraded_by_a_meter_that_is_down(
    clock: FakeClock,
) -> None:
    """health asks each mode's plugin whether it reads the meter; "any mode but off and fixed" is not the answer."""
    model = AmtronModel(clock, ev=EvProfile())
    nine = _Const("nine", 9.0)  # a third-party strategy that registered without uses_meter
    infos = {**builtin_strategy_infos(), "nine": StrategyInfo(name="nine", plugin="demo")}
    controller, bus = build_controller(
        clock, model, meters=[_BrokenMeter()], strategy=nine, mode="nine", strategy_infos=infos
    )
    task = asyncio.ensure_future(controller.run(duration_s=10))
    await clock.advance(11)
    await task
    record = controller.last_decision("wallbox")
    assert record is not None and record.strategy == "nine" and record.decision.current_a == 9.0
    meters, degraded = meter_health(controller)
    assert meters == {"grid": "error: meter offline"} and degraded == []
    assert controller.modes_reading_meter == {"pv", "minpv", "schedule"}
    controller.stop(hurry=True)
    await controller.shutdown()
    await bus.close()


async def test_one_controller_runs_several_chargers_with_their_own_strategies(clock: FakeClock) -> None:
    first = AmtronModel(clock, ev=EvProfile(), seed=1)
    second = AmtronModel(clock, ev=EvProfile(), seed=2)
    bus = ModelBus({50: first, 51: second}, clock)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    slots = []
    for cid, device_id, mode, amps in (("garage", 50, "fixed", 12), ("carport", 51, "off", 0)):
        options = {"fixed": {"current_a": amps or 6}}
        charger = AmtronCharger(bus, charger_id=cid, clock=clock, device_id=device_id)
        strategies = {name: f(options.get(name, {})) for name, f in factories.items()}
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode=mode))
    governor = SafetyGovernor({"garage": Limits(), "carport": Limits()})
    controller = Controller(clock=clock, chargers=slots, meters=[], governor=governor)
    task = asyncio.ensure_future(controller.run(duration_s=60))
    await clock.advance(61)
    await task
    await bus.close()
    assert controller.charger_ids == ("garage", "carport")
    assert first.em_current_a == 12.0 and first.record.heartbeats
    assert second.record.heartbeats and second.evse_state != 5
    assert not [w for w in second.record.writes if w.register == "CHARGING_RELEASE_EM" and w.value == 1]
    for model in (first, second):
        assert_governor_rules_held(model.record)


class _NonsenseMeter(_BrokenMeter):
    async def start(self) -> None:
        return None

    async def read(self) -> MeterReading:
        self.reads += 1
        # A plugin breaking its contract in a way only the snapshot notices.
        return MeterReading(meter_id=self.meter_id, read_at_s=None, grid_power_w=0.0)  # type: ignore[arg-type]


class _NoneMeter(_NonsenseMeter):
    async def read(self) -> MeterReading:
        self.reads += 1
        return None  # type: ignore[return-value]


async def test_a_meter_that_returns_no_reading_is_a_failed_meter(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, meters=[_NoneMeter()], mode="pv")
    task = asyncio.ensure_future(controller.run(duration_s=5))
    await clock.advance(6)
    await task
    await bus.close()
    reading = controller.meters()["grid"]
    assert reading.error == "returned NoneType instead of a MeterReading"
    assert controller.ticks >= 5


async def test_an_unexpected_error_in_a_tick_does_not_end_the_controller(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    meter = _NonsenseMeter()
    controller, bus = build_controller(clock, model, meters=[meter])
    with caplog.at_level(logging.ERROR):
        task = asyncio.ensure_future(controller.run(duration_s=10))
        await clock.advance(11)
        await task
    await bus.close()
    assert meter.reads >= 10  # it kept ticking
    assert len([r for r in caplog.records if "tick failed" in r.getMessage()]) == 1
    assert model.record.heartbeats[-1] >= clock.now() - 5  # the heartbeat went on until shutdown


async def test_a_restarted_controller_recovers_a_box_left_in_error_200(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The QA case: a previous controller set 10 A and release on, then was gone for > 10 s
    while no car was connected (error 200); the car came meanwhile."""
    model = AmtronModel(clock)
    model.write(R.HEARTBEAT_EM.address, [R.HEARTBEAT_VALUE], 6)
    model.write(R.CHARGING_RELEASE_EM.address, [1], 6)
    model.write(R.CHARGING_CURRENT_EM.address, codec.encode(R.CHARGING_CURRENT_EM, 10.0), 16)
    await clock.advance(15)
    assert (model.evse_state, model.error_code) == (6, 200)
    model.plug_in(EvProfile())
    restart_at = clock.now()
    controller, bus = build_controller(clock, model, fixed_current_a=10)  # the same setpoint as before
    task = asyncio.ensure_future(controller.run(duration_s=20))
    with caplog.at_level(logging.INFO, logger="surplus.loop"):
        await clock.advance(10)
    assert (model.evse_state, model.error_code) == (5, 0)  # charging again
    messages = [r.getMessage() for r in caplog.records]
    assert "wallbox: charger reports error 200 (Energy manager unavailable (no heartbeat))" in messages
    assert "wallbox: charger error cleared" in messages
    await clock.advance(11)
    await task
    await bus.close()
    record = controller.last_decision("wallbox")
    assert record is not None
    writes = [w.register for w in model.record.writes if w.at_s >= restart_at]
    i = writes.index("CHARGING_RELEASE_EM")
    assert writes[i - 1 : i + 2] == ["HEARTBEAT_EM", "CHARGING_RELEASE_EM", "CHARGING_CURRENT_EM"]


@pytest.mark.parametrize("with_car", [False, True], ids=["no-car", "car"])
async def test_a_paused_controller_recovers_an_idle_box_from_error_200(
    clock: FakeClock, with_car: bool
) -> None:
    """The QA case: mode off (or pv at night), the box in error 200: it must come back, not charge."""
    never_set = DeviceProfile(
        master_lost_fallback_current_a=0
    )  # with a car: error 200 only without a fallback
    model = AmtronModel(clock, profile=never_set, ev=EvProfile() if with_car else None)
    await clock.advance(15)  # no energy manager for 15 s
    assert (model.evse_state, model.error_code) == (6, 200)
    controller, bus = build_controller(clock, model, mode="off")
    task = asyncio.ensure_future(controller.run(duration_s=30))
    await clock.advance(31)
    await task
    await bus.close()
    assert model.error_code == 0 and model.evse_state != 6
    assert model.evse_state != 5  # recovered into a pause: the car is offered 0 A
    currents = [w.value for w in model.record.writes if w.register == "CHARGING_CURRENT_EM"]
    assert currents and all(0 < c < 6 for c in currents)  # only the soft-pause value, never 0, never charging
    assert_governor_rules_held(model.record)


@pytest.mark.parametrize(("hurry", "paused"), [(False, True), (True, False)], ids=["waits", "hurried"])
async def test_shutdown_waits_out_the_spacing_unless_hurried(
    clock: FakeClock, hurry: bool, paused: bool
) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=12)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(2)  # the release was switched on 2 s ago: a toggle must wait 3 s more
    stopped_at = clock.now()
    controller.stop(hurry=hurry)
    await clock.advance(10)
    await task
    await bus.close()
    offs = [w for w in model.record.writes if w.register == "CHARGING_RELEASE_EM" and w.value == 0]
    assert bool(offs) is paused
    if paused:
        assert offs[0].at_s - stopped_at <= 4.0


async def test_setting_a_mode_drops_the_override(clock: FakeClock) -> None:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=8)
    task = asyncio.ensure_future(controller.run())
    await clock.advance(10)
    await controller.set_override("wallbox", Override(current_a=16))
    controller.set_mode("wallbox", "fixed")
    assert controller.get_override("wallbox") is None
    await clock.advance(10)
    assert model.em_current_a == 8.0  # the mode's strategy decides again
    controller.stop()
    await clock.advance(10)
    await task
    await bus.close()


class _Const:
    """Charges at one current; reads nothing but the charger."""

    def __init__(self, name: str, current_a: float) -> None:
        self.name, self.current_a = name, current_a

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        return Decision(
            charger_id=ctx.charger_id,
            source=Source.STRATEGY,
            charge=True,
            current_a=self.current_a,
            reason="const",
        )


class _ContextRecorder:
    """A strategy that pauses and remembers what the loop told it."""

    name = "recorder"

    def __init__(self) -> None:
        self.contexts: list[StrategyContext] = []

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        self.contexts.append(ctx)
        return Decision(charger_id=ctx.charger_id, source=Source.STRATEGY, charge=False, reason="recording")


@pytest.mark.parametrize(
    ("limits", "want_a"),
    [(Limits(), 16.0), (Limits(fuse_limit_a=10.0), 10.0), (Limits(cable_max_a=13.0), 13.0)],
    ids=["device max", "fuse", "cable"],
)
async def test_strategies_plan_with_the_ceiling_the_governor_enforces(
    clock: FakeClock, limits: Limits, want_a: float
) -> None:
    model = AmtronModel(clock, ev=EvProfile())  # the simulated 11 kW box signals at most 16 A
    recorder = _ContextRecorder()
    controller, bus = build_controller(clock, model, strategy=recorder, mode="recorder", limits=limits)
    task = asyncio.ensure_future(controller.run(duration_s=3))
    await clock.advance(4)
    await task
    await bus.close()
    assert recorder.contexts and {c.max_current_a for c in recorder.contexts} == {want_a}
    assert {c.wall_s - c.now_s for c in recorder.contexts} == {clock.wall() - clock.now()}


def test_the_snapshot_keeps_every_field_of_a_meter_reading(clock: FakeClock) -> None:
    """_build_snapshot copies readings field by field (for speed): none may get lost."""
    model = AmtronModel(clock, ev=EvProfile())
    controller, _bus = build_controller(clock, model)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(MeterReading):
        values[f.name] = {
            "meter_id": "grid",
            "error": None,
            "grid": True,
            "phase_currents_a": (7.5, 8.5, 9.5),
        }.get(f.name, 7.5)
    values["read_at_s"] = clock.now()  # fresh: no "stale" error
    reading = MeterReading(**values)
    controller.coordinator._meter_readings["grid"] = reading
    copied = controller.coordinator._build_snapshot(clock.now()).meters["grid"]
    assert dataclasses.replace(copied, age_s=reading.age_s) == reading
    assert copied.age_s == 0.0


# --- implausible meter readings are failed reads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"grid_power_w": -1e12}, "implausible grid power -1e+12 W: beyond the 65.2 kW"),
        ({"grid_power_w": math.nan}, "implausible grid power nan W (not a finite number)"),
        ({"grid_power_w": 0.0, "pv_power_w": math.inf}, "implausible PV power inf W"),
        ({"grid_power_w": 0.0, "battery_soc_pct": 140.0}, "implausible battery state of charge 140 %"),
        ({"grid_power_w": -40_000.0}, None),  # a big PV plant on a 63 A connection: possible
    ],
)
def test_implausible_readings(fields: dict[str, Any], why: str | None) -> None:
    from surplus.loop import implausible, plausible_meter_w

    reading = MeterReading(meter_id="grid", read_at_s=0.0, **fields)
    found = implausible(reading, plausible_meter_w(63.0))
    assert (found is None) if why is None else (found is not None and found.startswith(why)), found


class _ScriptedMeter:
    """grid = what the car draws - the sun, except for scripted outliers at given seconds."""

    meter_id = "grid"
    instant = True

    def __init__(
        self, clock: FakeClock, model: AmtronModel, sun_w: float, outliers: dict[int, float]
    ) -> None:
        self._clock, self._model, self._sun_w, self._outliers = clock, model, sun_w, outliers
        self._t0 = clock.now()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self) -> MeterReading:
        second = round(self._clock.now() - self._t0)
        grid = self._outliers.get(second, self._model.charging_power_w - self._sun_w)
        return MeterReading(meter_id="grid", read_at_s=self._clock.now(), grid_power_w=grid)


@pytest.mark.parametrize("outlier_w", [-1e12, -30_000.0])
async def test_a_meter_outlier_never_raises_the_current(clock: FakeClock, outlier_w: float) -> None:
    """An implausible value is a failed read; a plausible one-tick spike is not followed upward."""
    from surplus.loop import plausible_meter_w

    model = AmtronModel(clock, ev=EvProfile())
    meter = _ScriptedMeter(clock, model, 2000.0, {120: outlier_w, 121: outlier_w})
    controller, bus = build_controller(clock, model, meters=[meter], mode="pv")
    controller.coordinator._meter_max_w = plausible_meter_w(63.0)
    task = asyncio.ensure_future(controller.run(duration_s=180))
    await clock.advance(100)
    before = model.em_current_a
    assert 8.0 <= before <= 9.0  # 2 kW on one phase
    await clock.advance(20.5)  # just after the tick that read the first outlier
    error = controller.meters()["grid"].error
    await clock.advance(60.5)
    await task
    await bus.close()
    after = [a for t, a in model.record.current_changes if t >= clock.now() - 81]
    assert max(after, default=before) <= before + 0.3, after
    if outlier_w == -1e12:
        assert error is not None and error.startswith("implausible grid power -1e+12 W")
    else:
        assert error is None  # possible, so believed for its tick, but never followed upward


async def test_the_rules_run_once_per_decision_and_what_is_remembered_is_what_was_judged(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: a write used to run the governor twice (evaluate, then commit re-ran govern)."""
    import surplus.governor as governor_module

    runs: list[float] = []
    real = governor_module.govern

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(clock.now())
        return real(*args, **kwargs)

    monkeypatch.setattr(governor_module, "govern", counting)
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=12)
    task = asyncio.ensure_future(controller.run(duration_s=10))
    await clock.advance(25)
    await task
    await bus.close()
    writes = [w for w in model.record.writes if w.register != R.HEARTBEAT_EM.name]
    assert writes, "nothing was written"
    decisions = controller.ticks + 2  # every tick once, plus the shutdown's safe state and its last look
    assert len(runs) <= decisions  # one run per decision, also for those that wrote
    memory = controller._governor.memory("wallbox")
    assert memory.current_a == model.em_current_a  # the judged command is what is remembered


async def test_full_reads_of_several_chargers_are_spread_over_the_interval(clock: FakeClock) -> None:
    models = [AmtronModel(clock, ev=EvProfile(), seed=i) for i in range(4)]
    bus = ModelBus({10 + i: m for i, m in enumerate(models)}, clock)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    full_reads: dict[str, list[float]] = {}
    slots = []
    for i in range(4):
        charger = AmtronCharger(bus, charger_id=f"box{i}", clock=clock, device_id=10 + i)
        real = charger.read_state

        async def read_state(*, full: bool = False, _real: Any = real, _id: str = f"box{i}") -> Any:
            if full:
                full_reads.setdefault(_id, []).append(clock.now())
            return await _real(full=full)

        charger.read_state = read_state  # type: ignore[method-assign]
        strategies = {name: f({}) for name, f in factories.items()}
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode="off"))
    governor = SafetyGovernor({f"box{i}": Limits() for i in range(4)})
    controller = Controller(clock=clock, chargers=slots, meters=[], governor=governor, full_read_every_s=60.0)
    task = asyncio.ensure_future(controller.run(duration_s=200))
    await clock.advance(201)
    await task
    await bus.close()
    start = full_reads["box0"][0]
    # Every box reads in full at start, then every 60 s, the i-th 15 s x i earlier the first time.
    for i in range(4):
        times = [round(t - start) for t in full_reads[f"box{i}"]]
        assert times[:2] == [0, 60 - 15 * i], (i, times)
        assert all(b - a == 60 for a, b in itertools.pairwise(times[1:]))
