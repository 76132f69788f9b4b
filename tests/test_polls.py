"""The poll plan: many boxes on one slow line share its wire time, heartbeats first.

The real bus owner, driver and loop run on a FakeClock over :class:`WireLink`, an
in-memory :class:`~surplus.modbus.bus.Link` onto simulator models that takes each
transaction's wire time (frame bytes at the line's baud and bits) on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from surplus.api import LineStatus, Override
from surplus.chargers.amtron import AmtronCharger
from surplus.clock import FakeClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.metrics import SnapshotCollector, bus_label
from surplus.modbus import plan
from surplus.modbus import registers as R
from surplus.modbus.base import BusError
from surplus.modbus.bus import BusConfig, ModbusBus
from surplus.modbus.polls import PollPlan
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.rpc_health import meter_health
from surplus.sim.model import AmtronModel, EvProfile

#: The start of the measurement span every poll reads (FAST_POLL's power block).
MEASURED_AT = R.CURRENT_L1.address


class WireLink:
    """Simulator models behind a line that takes each transaction's wire time on the fake clock."""

    def __init__(self, models: Mapping[int, AmtronModel], clock: FakeClock, config: BusConfig) -> None:
        self.models, self.clock, self.config = models, clock, config
        self.open = False
        #: Per device: clock times of its measurement reads.
        self.measured: dict[int, list[float]] = {}

    @property
    def connected(self) -> bool:
        return self.open

    async def connect(self) -> None:
        self.open = True

    def close(self) -> None:
        self.open = False

    async def _wire(self, device_id: int, frames: tuple[int, int]) -> AmtronModel:
        await self.clock.sleep(self.config.wire_time_s(*frames))
        model = self.models.get(device_id)
        if model is None:
            await self.clock.sleep(3600)
            raise BusError("no answer")
        return model

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        model = await self._wire(device_id, plan.read_bytes(count))
        if address == MEASURED_AT:
            self.measured.setdefault(device_id, []).append(self.clock.now())
        return model.read(address, count)

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        model = await self._wire(device_id, plan.write_single_bytes())
        model.write(address, [value], 0x06)

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        model = await self._wire(device_id, plan.write_multiple_bytes(len(values)))
        model.write(address, list(values), 0x10)


async def line_of(
    clock: FakeClock, boxes: int, baudrate: int
) -> tuple[Controller, ModbusBus, WireLink, dict[int, AmtronModel]]:
    models = {10 + i: AmtronModel(clock, ev=EvProfile(), seed=i, keep_record=True) for i in range(boxes)}
    config = BusConfig(port="/dev/ttyFAKE", baudrate=baudrate, timeout_s=1.0, retries=1)
    link = WireLink(models, clock, config)
    bus = ModbusBus(config, clock, link_factory=lambda _: link)
    await bus.start()
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    slots = [
        ChargerSlot(
            charger=AmtronCharger(bus, charger_id=f"box{d}", clock=clock, device_id=d),
            strategies={name: f({"fixed": {"current_a": 10}}.get(name, {})) for name, f in factories.items()},
            mode="fixed",
        )
        for d in models
    ]
    governor = SafetyGovernor({s.charger_id: Limits() for s in slots})
    controller = Controller(
        clock=clock, chargers=slots, meters=[], governor=governor, tick_s=1.0, lines={"line1": bus}
    )
    return controller, bus, link, models


@contextlib.asynccontextmanager
async def running(clock: FakeClock, controller: Controller, bus: ModbusBus) -> AsyncIterator[None]:
    """The controller's run loop, stopped (safe state, heartbeats last) however the test ends."""
    run = asyncio.ensure_future(controller.run())
    try:
        yield
    finally:
        controller.stop(hurry=True)
        await clock.advance(30)
        await run
        await bus.close()


def oldest_s(times: list[float], start: float, end: float) -> float:
    """The oldest a box's measurements got within [start, end]: the longest gap between reads."""
    before = [t for t in times if t <= end]
    return max([end - before[-1], *(b - a for a, b in itertools.pairwise(before) if b >= start)])


@pytest.mark.parametrize(
    ("boxes", "baudrate", "every_s"),
    [
        (4, 57600, 1.0),  # few boxes: every box every tick
        (60, 57600, 4.0),  # a car park on one line: the polls spread, each box every 4 s
        (20, 19200, 4.0),  # a slow line carries fewer
    ],
)
async def test_the_polls_spread_when_the_line_is_short_and_heartbeats_never_suffer(
    boxes: int, baudrate: int, every_s: float
) -> None:
    clock = FakeClock()
    controller, bus, link, models = await line_of(clock, boxes, baudrate)
    async with running(clock, controller, bus):
        await clock.advance(40)  # started, first round read in full
        start = clock.now()
        longest_tick = 0.0
        for _ in range(60):
            await clock.advance(1.0)
            longest_tick = max(longest_tick, controller.last_tick_s or 0.0)
        end = clock.now()
        oldest = max(oldest_s(link.measured[d], start, end) for d in models)
        status = controller.lines()["line1"]
        assert status.poll_interval_s == every_s and status.boxes == boxes and status.problem is None
        assert oldest <= bus.polls.worst_age_s == every_s + 1.0 <= 10.0  # within the stated age
        assert max(m.record.worst_heartbeat_gap_s for m in models.values()) <= 5.0
        assert bus.load() <= 0.8  # the line keeps its margin ...
        assert longest_tick <= 1.25  # ... so the tick hardly stretches (reading all 60: > 2 s)
        assert meter_health(controller)[1] == []  # not degraded
        assert all(controller.last_decision(f"box{d}") is not None for d in models)


async def test_a_line_that_cannot_hold_the_age_says_so_and_keeps_its_heartbeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    controller, bus, _link, models = await line_of(clock, 20, 9600)
    async with running(clock, controller, bus):
        with caplog.at_level(logging.WARNING, logger="surplus.modbus.bus"):
            await clock.advance(120)
        status = controller.lines()["line1"]
        assert status.poll_interval_s is not None and status.poll_interval_s > 9.0
        assert status.problem is not None and "limit 10 s" in status.problem
        reasons = meter_health(controller)[1]
        assert reasons == [f"line line1: {status.problem}"]  # health: degraded, with the reason
        warned = [r for r in caplog.records if "boxes need more than the line carries" in r.getMessage()]
        assert len(warned) == 1  # once, not every tick
        assert max(m.record.worst_heartbeat_gap_s for m in models.values()) <= 5.0
        assert bus.load() <= 0.8
        families = {f.name: f for f in SnapshotCollector(controller, buses=[bus]).collect()}
        (interval,) = families["surplus_bus_poll_interval_seconds"].samples
        (over,) = families["surplus_bus_poll_over_age"].samples
        assert interval.labels == {"bus": bus_label(0)} and interval.value == status.poll_interval_s
        assert over.value == 1.0


async def test_a_box_just_written_to_is_read_on_the_next_tick_out_of_turn() -> None:
    clock = FakeClock()
    controller, bus, link, _models = await line_of(clock, 60, 57600)
    async with running(clock, controller, bus):
        await clock.advance(40)
        box = 30
        for _ in range(10):  # until the box has just had its turn
            seen = len(link.measured[box])
            await clock.advance(1.0)
            if len(link.measured[box]) > seen:
                break
        assert bus.polls.every_ticks > 2
        seen = len(link.measured[box])
        asked = asyncio.ensure_future(controller.set_override(f"box{box}", Override(current_a=13)))
        for _ in range(20):  # the write waits for this tick's reads
            await clock.advance(0.1)
            if asked.done():
                break
        assert (await asked).command is not None  # written
        await clock.advance(1.5)  # the next tick's reads
        assert len(link.measured[box]) == seen + 1  # read back at once, not 4 ticks after its turn


def test_the_plan_reads_the_oldest_boxes_first_and_says_its_interval() -> None:
    plan_ = PollPlan(tick_s=1.0, max_age_s=10.0, target_load=0.8)
    now = 0.0
    for d in range(10):  # the first round: everybody, each poll 0.2 s of line
        assert plan_.turn(d, now, wire_s=0.2)
    granted: list[list[int]] = []
    for tick in range(1, 6):
        granted.append([d for d in range(10) if plan_.turn(d, float(tick), wire_s=0.2)])
    # 0.8 s of line per tick carries 4 polls: 10 boxes every 3 ticks, round robin.
    assert (plan_.per_tick, plan_.every_ticks, plan_.interval_s) == (4, 3, 3.0)
    assert granted == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 8, 9], [2, 3, 4, 5], [0, 1, 6, 7]]
    assert plan_.turn(9, 6.0, urgent=True)  # out of turn when its data matters now
    plan_.reserved_load = 0.5  # heartbeats come first: 0.3 s left, one poll a tick
    plan_.turn(0, 7.0, wire_s=0.2)
    assert (plan_.per_tick, plan_.interval_s) == (1, 10.0)
    assert plan_.problem is not None and "read every 10 s" in plan_.problem
    assert math.isclose(plan_.read_budget_s(), 0.3)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("poll_tick_s", 0.0, "poll_tick_s must be positive"),
        ("poll_max_age_s", -1.0, "poll_max_age_s must be positive"),
        ("poll_target_load", 1.5, r"poll_target_load must be in \(0, 1\]"),
    ],
)
def test_bad_poll_settings_are_refused(setting: str, value: float, message: str) -> None:
    kwargs: dict[str, Any] = {setting: value}
    with pytest.raises(ValueError, match=message):
        BusConfig(**kwargs)


def test_line_status_without_a_plan_is_still_shown() -> None:
    assert LineStatus(connected=True, load=0.5).poll_interval_s is None
