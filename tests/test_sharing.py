"""Sharing the surplus among several pv chargers: the split as tables, then two boxes on the fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from surplus.chargers.amtron import AmtronCharger
from surplus.circuits import Circuit, CircuitTree, Wiring
from surplus.clock import FakeClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.sharing import CircuitRoom, Sharer, split_surplus
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.strategy import IDLE_S
from surplus.types import MeterReading

from .loop_support import assert_governor_rules_held
from .test_circuits import assert_within_circuits

V = 230.0
W3 = 3 * V  # W per A on three phases


def box(cid: str, **kw: object) -> Sharer:
    fields: dict[str, object] = {"charger_id": cid, "volts": V, "max_a": 32.0, "charging": True}
    fields.update(kw)
    return Sharer(**fields)  # type: ignore[arg-type]


# (name, surplus W, sharers, expected amps per charger: budget / (phases x volts), a why fragment)
SPLITS: list[tuple[str, float, list[Sharer], dict[str, float], str]] = [
    ("equal current", 20 * W3, [box("a"), box("b")], {"a": 10, "b": 10}, "share 10.0 A"),
    (
        "a higher priority is filled first, to its maximum",
        28 * W3,
        [box("a", priority=1), box("b", priority=2, max_a=16)],
        {"a": 12, "b": 16},
        "priority 2",
    ),
    (
        "equal amps for a 1-phase and a 3-phase box",
        10 * (W3 + V),
        [box("a", phases=1), box("b")],
        {"a": 10, "b": 10},
        "share 10.0 A",
    ),
    (
        "when not all get 6 A, the last in order gets nothing",
        13 * W3,
        [box("a"), box("b"), box("c")],
        {"a": 6.5, "b": 6.5, "c": 0},
        "carries 2 of 3 boxes",
    ),
    (
        "the lowest priority pauses first, wherever it is listed",
        8 * W3,
        [box("low", priority=1), box("high", priority=2)],
        {"low": 0, "high": 8},
        "no share",
    ),
    (
        "a charging box keeps its place before a paused one of the same priority",
        8 * W3,
        [box("paused", charging=False), box("charging")],
        {"paused": 0, "charging": 8},
        "comes later",
    ),
    (
        "a box inside its 5 minutes after a pause takes no part",
        13 * W3,
        [box("waiting", charging=False, can_start=False), box("b")],
        {"waiting": 0, "b": 13},
        "5 minutes",
    ),
    (
        "a box its circuit leaves less than 6 A takes no part",
        13 * W3,
        [box("full", max_a=3.9), box("b")],
        {"full": 0, "b": 13},
        "leave 3.9 A",
    ),
    (
        "not even one minimum: the first box gets it all and decides as if alone",
        4 * W3,
        [box("a"), box("b", priority=3)],
        {"a": 0, "b": 4},
        "all of it",
    ),
    (
        "every box at its maximum: the rest stays with the first",
        40 * W3,
        [box("a", max_a=16), box("b", max_a=16)],
        {"a": 24, "b": 16},
        "share",
    ),
    (
        "a car that takes nothing keeps no minimum, whatever its priority: the other takes it all",
        10 * W3,
        [box("full", priority=2, takes_nothing=True), box("b")],
        {"full": 0, "b": 10},
        "its car takes nothing: it gets what the others leave, 0.00 of 6.90 kW",
    ),
    (
        "a car that takes nothing gets what the others cannot take",
        24 * W3,
        [box("full", takes_nothing=True), box("b", max_a=16)],
        {"full": 8, "b": 16},
        "1 box whose car takes nothing after it",
    ),
    (
        "less than 6 A left: a car that takes nothing gets none of it (nothing to ride through)",
        20 * W3,
        [box("full", takes_nothing=True), box("b", max_a=16)],
        {"full": 0, "b": 16},
        "what the others leave, 2.76 of 13.80 kW (no share: not enough for 6 A)",
    ),
    (
        "two cars that take nothing share the rest by the same rules",
        40 * W3,
        [box("f1", takes_nothing=True), box("a", max_a=16), box("f2", takes_nothing=True, priority=2)],
        {"f1": 6, "a": 16, "f2": 18},
        "2 boxes whose car takes nothing after it",
    ),
    (
        "when every car takes nothing they share as usual",
        20 * W3,
        [box("f1", takes_nothing=True), box("f2", takes_nothing=True)],
        {"f1": 10, "f2": 10},
        "share 10.0 A",
    ),
    (
        "below one minimum the box that draws gets it all, not the full one before it",
        4 * W3,
        [box("full", priority=3, takes_nothing=True), box("b")],
        {"full": 0, "b": 4},
        "all of it",
    ),
    (
        "a negative surplus: the first gets it (and pauses as alone)",
        -1000.0,
        [box("a"), box("b")],
        {"a": -1000 / W3, "b": 0},
        "all of it",
    ),
]


GARAGE = CircuitRoom(id="garage", room_a=(16.0, 16.0, 16.0), members=frozenset({"a", "b"}))

# (name, surplus W, sharers, circuits, expected amps, a why fragment)
CIRCUIT_SPLITS: list[tuple[str, float, list[Sharer], list[CircuitRoom], dict[str, float], str]] = [
    (
        "a circuit's room is shared equally, whatever the sun",
        40 * W3,
        [box("a"), box("b")],
        [GARAGE],
        {"a": 8, "b": 8},
        "share 8.0 A",
    ),
    (
        "a higher priority gets the circuit's room first",
        40 * W3,
        [box("a"), box("b", priority=2)],
        [GARAGE],
        {"a": 6, "b": 10},
        "priority 2",
    ),
    (
        "a box whose 6 A no longer fit gets nothing; one outside the circuit still does",
        40 * W3,
        [box("a"), box("b"), box("c")],
        [dataclasses.replace(GARAGE, room_a=(10.0, 10.0, 10.0))],
        {"a": 10, "b": 0, "c": 30},
        "circuit garage has no 6 A left",
    ),
    (
        "single-phase boxes on different grid phases do not share a phase",
        40 * V,
        [box("a", phases=1, grid_phases=(0,)), box("b", phases=1, grid_phases=(1,))],
        [GARAGE],
        {"a": 16, "b": 16},
        "share 16.0 A",
    ),
    (
        "a car that takes nothing gets only the room the others' shares leave",
        40 * W3,
        [box("a", takes_nothing=True, priority=2), box("b", max_a=10)],
        [GARAGE],
        {"a": 6, "b": 10},
        "its car takes nothing",
    ),
    (
        "the room left by the others (not sharing) on one phase binds",
        40 * W3,
        [box("a"), box("b")],
        [dataclasses.replace(GARAGE, room_a=(16.0, 12.0, 16.0))],
        {"a": 6, "b": 6},
        "share 6.0 A",
    ),
]


@pytest.mark.parametrize(
    ("surplus_w", "sharers", "circuits", "amps", "fragment"),
    [s[1:] for s in CIRCUIT_SPLITS],
    ids=[s[0] for s in CIRCUIT_SPLITS],
)
def test_split_surplus_within_circuits(
    surplus_w: float,
    sharers: list[Sharer],
    circuits: list[CircuitRoom],
    amps: Mapping[str, float],
    fragment: str,
) -> None:
    shares = split_surplus(surplus_w, sharers, circuits)
    got = {s.charger_id: shares[s.charger_id].budget_w / s.w_per_a for s in sharers}
    assert got == pytest.approx(amps)
    assert any(fragment in sh.why for sh in shares.values()), [sh.why for sh in shares.values()]
    for c in circuits:  # never more than a circuit's room on any phase
        for g in range(3):
            used = sum(got[s.charger_id] for s in sharers if s.charger_id in c.members and g in s.grid_phases)
            assert used <= c.room_a[g] + 1e-6


@pytest.mark.parametrize(
    ("surplus_w", "sharers", "amps", "fragment"), [s[1:] for s in SPLITS], ids=[s[0] for s in SPLITS]
)
def test_split_surplus(
    surplus_w: float, sharers: list[Sharer], amps: Mapping[str, float], fragment: str
) -> None:
    shares = split_surplus(surplus_w, sharers)
    assert set(shares) == {s.charger_id for s in sharers}
    got = {s.charger_id: shares[s.charger_id].budget_w / s.w_per_a for s in sharers}
    assert got == pytest.approx(amps)
    given = sum(sh.budget_w for sh in shares.values())
    if any(s.takes_nothing for s in sharers) and surplus_w > 0:  # what nobody can take stays untaken
        assert given <= surplus_w + 1e-6
    else:
        assert given == pytest.approx(surplus_w)  # all of it, no more
    assert any(fragment in sh.why for sh in shares.values()), [sh.why for sh in shares.values()]


# --- two pv boxes on the fake clock ------------------------------------------------------------------


class SunMeter:
    """A grid meter over a sun the test sets: house 300 W, minus the sun, plus what the cars draw."""

    meter_id = "grid"
    instant = True

    def __init__(self, clock: FakeClock, models: list[AmtronModel]) -> None:
        self.clock, self.models, self.sun_w = clock, models, 0.0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def read(self) -> MeterReading:
        grid = 300.0 - self.sun_w + sum(m.charging_power_w for m in self.models)
        return MeterReading(meter_id=self.meter_id, read_at_s=self.clock.now(), grid_power_w=grid)


@dataclass
class TwoBoxes:
    """Two pv boxes (three phases) on one model bus under the real controller, a sun the test sets."""

    clock: FakeClock
    models: dict[str, AmtronModel]
    bus: ModelBus
    meter: SunMeter
    controller: Controller
    task: asyncio.Future[None]

    @classmethod
    def start(
        cls,
        clock: FakeClock,
        cars: dict[str, tuple[EvProfile, int]],
        duration_s: float,
        circuits: CircuitTree | None = None,
    ) -> TwoBoxes:
        """``cars``: per charger id, its car and its priority (device ids 10, 11, ... in this order)."""
        models = {cid: AmtronModel(clock, ev=ev, seed=i + 1) for i, (cid, (ev, _)) in enumerate(cars.items())}
        bus = ModelBus({10 + i: m for i, m in enumerate(models.values())}, clock)
        factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
        slots = []
        for i, (cid, (_, priority)) in enumerate(cars.items()):
            strategies = {name: f({"pv": {"phases": 3}}.get(name, {})) for name, f in factories.items()}
            charger = AmtronCharger(
                bus, charger_id=cid, clock=clock, device_id=10 + i, heartbeat_interval_s=3.0
            )
            slots.append(ChargerSlot(charger=charger, strategies=strategies, mode="pv", priority=priority))
        meter = SunMeter(clock, list(models.values()))
        governor = SafetyGovernor({cid: Limits() for cid in cars})
        controller = Controller(
            clock=clock, chargers=slots, meters=[meter], governor=governor, tick_s=1.0, circuits=circuits
        )
        task = asyncio.ensure_future(controller.run(duration_s=duration_s))
        return cls(clock, models, bus, meter, controller, task)

    def amps(self, cid: str) -> float:
        return self.models[cid].charging_current_a

    async def finish(self, after_s: float) -> None:
        """Advance past the run's end, close the bus, and check the governor's rules on every box."""
        await self.clock.advance(after_s)
        await self.task
        await self.bus.close()
        for m in self.models.values():
            assert_governor_rules_held(m.record)


async def test_two_pv_boxes_share_by_priority_and_the_lower_one_pauses_first() -> None:
    clock = FakeClock()
    big = 200_000
    boxes = TwoBoxes.start(
        clock,
        {"low": (EvProfile(soc=0.05, capacity_wh=big), 1), "high": (EvProfile(soc=0.05, capacity_wh=big), 2)},
        2400,
    )
    models, meter, controller, amps = boxes.models, boxes.meter, boxes.controller, boxes.amps

    meter.sun_w = 300 + 24 * W3  # 24 A: high first, up to its 16 A (the 11 kW box's maximum); low the rest
    await clock.advance(120)
    assert amps("high") == pytest.approx(16.0, abs=0.3) and amps("low") == pytest.approx(8.0, abs=0.3)
    decision = controller.last_decision("low")
    assert decision is not None and "share 8.0 A of" in decision.decision.reason

    meter.sun_w = 300 + 9 * W3  # 9 A: not enough for two at 6 A: the lower priority pauses
    await clock.advance(600)
    assert amps("low") == 0 and amps("high") == pytest.approx(9.0, abs=0.3)
    low = controller.last_decision("low")
    assert low is not None and "comes later (priority 1)" in low.decision.reason
    paused_at = max(
        w.at_s for w in models["low"].record.writes if w.register == "CHARGING_RELEASE_EM" and w.value == 0
    )

    meter.sun_w = 300 + 20 * W3  # room for both: low resumes (5 minutes after its pause at the earliest)
    await clock.advance(900)
    assert amps("high") == pytest.approx(14.0, abs=0.3) and amps("low") == pytest.approx(6.0, abs=0.3)
    resumed_at = min(
        w.at_s
        for w in models["low"].record.writes
        if w.register == "CHARGING_RELEASE_EM" and w.value == 1 and w.at_s > paused_at
    )
    assert resumed_at - paused_at >= 300.0
    await boxes.finish(800)  # past the run's 2400 s


async def test_a_full_car_leaves_the_sun_to_the_car_that_draws_until_it_draws_again() -> None:
    """A full car first in line (priority 2) kept its minimum: the other car got nothing all day."""
    clock = FakeClock()
    boxes = TwoBoxes.start(
        clock,
        {
            "full": (EvProfile(soc=1.0, capacity_wh=200_000), 2),
            "hungry": (EvProfile(soc=0.05, capacity_wh=200_000), 1),
        },
        1000,
    )
    models, meter, controller, amps = boxes.models, boxes.meter, boxes.controller, boxes.amps

    def reason(cid: str) -> str:
        last = controller.last_decision(cid)
        assert last is not None
        return last.decision.reason

    meter.sun_w = 300 + 10 * W3  # 10 A on three phases: one box at 6 A or more, not two
    await clock.advance(IDLE_S)
    assert amps("hungry") == 0  # the full car, first in line, was offered the sun for IDLE_S
    await clock.advance(300)
    assert amps("hungry") == pytest.approx(10.0, abs=0.3) and amps("full") == 0
    assert "its car takes nothing: it gets what the others leave" in reason("full")
    assert "1 box whose car takes nothing after it" in reason("hungry")

    meter.sun_w = 300 + 22 * W3  # more than the hungry car's 16 A: the rest is the full car's
    await clock.advance(120)
    assert amps("hungry") == pytest.approx(16.0, abs=0.3)
    assert "what the others leave, 4.1" in reason("full")  # 6 A x 3 x 230 V = 4.14 kW

    models["full"].unplug()  # a car that draws comes to the first box: its share again, at once
    await clock.advance(20)
    models["full"].plug_in(EvProfile(soc=0.05, capacity_wh=200_000))
    await clock.advance(120)
    assert amps("full") == pytest.approx(16.0, abs=0.3) and amps("hungry") == pytest.approx(6.0, abs=0.3)
    assert "takes nothing" not in reason("full") + reason("hungry")
    await boxes.finish(1000 - (2 * IDLE_S + 260) + 2)  # past the run's 1000 s


async def test_a_full_car_gives_its_circuit_room_to_the_car_that_draws() -> None:
    """Two boxes in a 16 A garage, far more sun: the full car held 8 A of the garage all day."""
    clock = FakeClock()
    big = EvProfile(soc=0.05, capacity_wh=200_000, max_current_a=32)
    garage = CircuitTree(
        {"garage": Circuit(id="garage", limit_a=16)},
        {"full": Wiring(circuit="garage"), "hungry": Wiring(circuit="garage")},
    )
    boxes = TwoBoxes.start(
        clock, {"full": (dataclasses.replace(big, soc=1.0), 1), "hungry": (big, 1)}, 1000, circuits=garage
    )
    boxes.meter.sun_w = 300 + 40 * W3
    await clock.advance(120)
    assert boxes.amps("hungry") == pytest.approx(8.0, abs=0.2)  # the garage shared, as for two cars that draw
    await clock.advance(IDLE_S + 60)
    assert boxes.amps("hungry") == pytest.approx(16.0, abs=0.2)  # all of the garage
    assert boxes.models["full"].values()["CHARGING_RELEASE_EM"] == 0  # paused: it holds none of it
    last = boxes.controller.last_decision("full")
    assert last is not None and "its car takes nothing: it gets what the others leave" in last.decision.reason
    for _ in range(200):  # never above the garage's 16 A on any phase
        await clock.advance(1.0)
        assert_within_circuits(garage, boxes.models, [])
    await boxes.finish(1000 - (IDLE_S + 380) + 2)


async def test_two_pv_boxes_share_a_circuit_equally_when_the_second_arrives() -> None:
    clock = FakeClock()
    models = {
        "a": AmtronModel(clock, ev=EvProfile(soc=0.05, capacity_wh=200_000, max_current_a=32), seed=1),
        "b": AmtronModel(clock, ev=EvProfile(soc=0.05, capacity_wh=200_000, max_current_a=32), seed=2),
    }
    bus = ModelBus({10: models["a"], 11: models["b"]}, clock)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    slots = []
    for cid, device_id, mode in (("a", 10, "pv"), ("b", 11, "off")):
        strategies = {name: f({"pv": {"phases": 3}}.get(name, {})) for name, f in factories.items()}
        charger = AmtronCharger(
            bus, charger_id=cid, clock=clock, device_id=device_id, heartbeat_interval_s=3.0
        )
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode=mode))
    tree = CircuitTree(
        {"garage": Circuit(id="garage", limit_a=16)},
        {"a": Wiring(circuit="garage"), "b": Wiring(circuit="garage", rotation=(1, 2, 0))},
    )
    meter = SunMeter(clock, list(models.values()))
    meter.sun_w = 300 + 40 * W3  # far more sun than the garage carries
    governor = SafetyGovernor({"a": Limits(), "b": Limits()})
    controller = Controller(
        clock=clock, chargers=slots, meters=[meter], governor=governor, tick_s=1.0, circuits=tree
    )
    task = asyncio.ensure_future(controller.run(duration_s=700))
    for second in range(600):
        await clock.advance(1.0)
        assert_within_circuits(tree, models, [])
        if second == 120:  # a alone has the whole garage (the 11 kW box's 16 A); then b arrives
            assert models["a"].charging_current_a == pytest.approx(16.0)
            controller.set_mode("b", "pv")
    assert models["a"].charging_current_a == pytest.approx(8.0, abs=0.2)
    assert models["b"].charging_current_a == pytest.approx(8.0, abs=0.2)
    b = controller.last_decision("b")
    assert b is not None and "share 8.0 A of" in b.decision.reason
    await clock.advance(102)
    await clock.advance(2)
    await task
    await bus.close()
    for m in models.values():
        assert_governor_rules_held(m.record)
