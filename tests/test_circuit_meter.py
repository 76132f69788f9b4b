"""A circuit's own meter: the other loads on a circuit take their share of its limit, and a meter that
fails is counted on the safe side. Tables for the estimate, then the loop on the fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from surplus.chargers.amtron import AmtronCharger
from surplus.circuit_meters import OtherLoadWatch, measured_others
from surplus.circuits import Circuit, CircuitTree, LoadBook, Wiring, rotation_of
from surplus.clock import FakeClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.types import ChargerReading, MeterReading, Snapshot

from .factories import charger_state
from .loop_support import assert_governor_rules_held

# garage (20 A per phase, metered by "gm"): a (standard wiring) and b (wired L2-L3-L1).
TREE = CircuitTree(
    {"garage": Circuit(id="garage", limit_a=20, meter="gm")},
    {"a": Wiring(circuit="garage"), "b": Wiring(circuit="garage", rotation=rotation_of(["L2", "L3", "L1"]))},
)


def meter(currents: tuple[float, float, float] | None, *, error: str | None = None) -> MeterReading:
    return MeterReading(
        meter_id="gm", read_at_s=0.0, grid_power_w=0.0, phase_currents_a=currents, error=error
    )


def box(cid: str, drawn: tuple[float, float, float]) -> ChargerReading:
    l1, l2, l3 = drawn
    state = charger_state(cid, current_l1_a=l1, current_l2_a=l2, current_l3_a=l3)
    return ChargerReading(charger_id=cid, state=state, age_s=0.5, connected=True)


@pytest.mark.parametrize(
    ("name", "currents", "chargers", "expected"),
    [
        ("nothing but the chargers", (10.0, 10.0, 10.0), {"a": box("a", (10, 10, 10))}, (0.0, 0.0, 0.0)),
        ("an oven on L1", (16.0, 10.0, 10.0), {"a": box("a", (10, 10, 10))}, (6.0, 0.0, 0.0)),
        # b's box L1 is the grid's L2: its single-phase 16 A is taken off L2.
        ("a rotated 1-phase box", (3.0, 17.0, 1.0), {"b": box("b", (16, 0, 0))}, (3.0, 1.0, 1.0)),
        ("an export counts as load on the fuse", (-8.0, 0.0, 0.0), {}, (8.0, 0.0, 0.0)),
        # A box whose reading is NaN leaves its current in the estimate (over, never under).
        ("a NaN box reading", (10.0, 10.0, 10.0), {"a": box("a", (float("nan"), 10, 10))}, (10.0, 0.0, 0.0)),
        (
            "the meter lags a box that just rose",
            (6.0, 6.0, 6.0),
            {"a": box("a", (16, 16, 16))},
            (0.0, 0.0, 0.0),
        ),
        (
            "a box never read",
            (7.0, 7.0, 7.0),
            {"a": ChargerReading(charger_id="a", state=None)},
            (7.0, 7.0, 7.0),
        ),
    ],
)
def test_other_loads_are_the_meter_less_the_chargers_measured_currents(
    name: str, currents: tuple[float, float, float], chargers: dict[str, ChargerReading], expected: Any
) -> None:
    assert measured_others(TREE, "garage", meter(currents), chargers) == pytest.approx(expected), name


@pytest.mark.parametrize(
    "reading",
    [meter(None), meter((1.0, float("nan"), 1.0)), meter((1.0, 1.0, 1.0), error="timeout")],
    ids=["no phase currents", "a NaN current", "a failed read"],
)
def test_a_reading_without_usable_currents_gives_no_estimate(reading: MeterReading) -> None:
    assert measured_others(TREE, "garage", reading, {}) is None


def test_the_estimate_holds_its_peak_then_the_meter_lost_load_counts() -> None:
    watch = OtherLoadWatch(TREE, hold_s=15.0)
    idle = {"a": box("a", (0, 0, 0))}
    assert watch.update(0.0, {"gm": meter((6.0, 0.0, 0.0))}, idle)["garage"].amps == (6.0, 0.0, 0.0)
    # The oven goes off: for 15 s its 6 A still count (a charger that rose may look like this).
    assert watch.update(10.0, {"gm": meter((0.0, 0.0, 0.0))}, idle)["garage"].amps == (6.0, 0.0, 0.0)
    assert watch.update(15.5, {"gm": meter((0.0, 0.0, 0.0))}, idle)["garage"].amps == (0.0, 0.0, 0.0)
    # The meter fails: its last estimate holds for 15 s, then the whole limit counts (chargers pause).
    held = watch.update(20.0, {"gm": meter((9.0, 9.0, 9.0), error="stale (12 s old)")}, idle)["garage"]
    assert held.amps == (0.0, 0.0, 0.0) and "failing, its last reading held for 15 s" in held.why
    lost = watch.update(31.0, {"gm": meter((9.0, 9.0, 9.0), error="stale (23 s old)")}, idle)["garage"]
    assert lost.amps == (20.0, 20.0, 20.0)
    assert lost.why == "meter gm failing for 16 s: stale (23 s old); other loads counted at 20 A"
    # Back: at once what it measures.
    assert watch.update(40.0, {"gm": meter((2.0, 3.0, 4.0))}, idle)["garage"].amps == (2.0, 3.0, 4.0)


def test_a_configured_meter_lost_load_and_a_meter_never_read() -> None:
    tree = CircuitTree(
        {"garage": Circuit(id="garage", limit_a=20, meter="gm", meter_lost_load_a=8)},
        {"a": Wiring(circuit="garage")},
    )
    other = OtherLoadWatch(tree, hold_s=15.0).update(0.0, {}, {})["garage"]
    assert other.amps == (8.0, 8.0, 8.0) and other.why == "meter gm never read; other loads counted at 8 A"


def test_the_headroom_counts_the_other_loads_and_says_so() -> None:
    others = OtherLoadWatch(TREE, hold_s=15.0).update(
        0.0, {"gm": meter((15.0, 9.0, 9.0))}, {"a": box("a", (9, 9, 9))}
    )
    book = LoadBook(TREE, {"a": (9.0, 9.0, 9.0)}, others)
    room = book.headroom("b", 3)
    assert room is not None and room.amps == pytest.approx(5.0)  # 20 - a 9 - the oven's 6 on L1
    assert room.why == (
        "circuit garage: 5.0 A left on L1 (limit 20 A, others 15.0 A; other loads 6.0 A on L1 (meter gm))"
    )


def test_a_circuit_only_meter_is_not_part_of_the_grid_power() -> None:
    grid = MeterReading(meter_id="grid", read_at_s=0.0, grid_power_w=-3000.0)
    sub = MeterReading(meter_id="gm", read_at_s=0.0, grid_power_w=2500.0, grid=False, error="timeout")
    assert Snapshot(at_s=0.0, meters={"grid": grid, "gm": sub}).grid_power_w == -3000.0
    assert Snapshot(at_s=0.0, meters={"gm": sub}).grid_power_w is None


# ---------------------------------------------------------------------------- the loop, fake clock


@dataclass
class CircuitMeter:
    """The garage's meter: what the simulated boxes offer on each grid phase plus scripted other loads.

    An in-memory fake behind the Meter protocol (read in place, like the simulated meter);
    the same meter over real HTTP is in tests/test_circuits_stack.py.
    """

    clock: FakeClock
    models: dict[str, AmtronModel]
    tree: CircuitTree
    #: (from_s, amps per grid phase) steps; and when the meter fails.
    others: list[tuple[float, tuple[float, float, float]]] = field(default_factory=list)
    down: tuple[float, float] = (-1.0, -1.0)
    instant = True

    def __post_init__(self) -> None:
        self.start_s = self.clock.now()  # the script's times count from here

    @property
    def meter_id(self) -> str:
        return "gm"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def other_now(self) -> tuple[float, float, float]:
        now = self.clock.now() - self.start_s
        current = (0.0, 0.0, 0.0)
        for at, amps in self.others:
            if now >= at:
                current = amps
        return current

    def physical(self) -> list[float]:
        total = list(self.other_now())
        for cid, model in self.models.items():
            drawn = model.charging_current_a
            phases = 1 if model.switched_phases == 1 else 3
            load = [drawn if i < phases else 0.0 for i in range(3)]
            for g, amps in enumerate(TREE.grid_load(cid, load)):
                total[g] += amps
        return total

    async def read(self) -> MeterReading:
        if self.down[0] <= self.clock.now() - self.start_s < self.down[1]:
            raise TimeoutError("no answer")
        a, b, c = self.physical()
        return MeterReading(
            meter_id="gm", read_at_s=self.clock.now(), grid_power_w=0.0, phase_currents_a=(a, b, c)
        )


async def test_other_loads_and_a_failing_meter_keep_the_garage_within_its_limit() -> None:
    clock = FakeClock()
    models = {cid: AmtronModel(clock, ev=EvProfile(max_current_a=32), seed=i) for i, cid in enumerate("ab")}
    bus = ModelBus({10: models["a"], 11: models["b"]}, clock)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    slots = []
    for device_id, cid in enumerate("ab", start=10):
        charger = AmtronCharger(
            bus, charger_id=cid, clock=clock, device_id=device_id, heartbeat_interval_s=3.0
        )
        strategies = {n: f({"current_a": 12} if n == "fixed" else {}) for n, f in factories.items()}
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode="fixed", fallback="pause"))
    gm = CircuitMeter(clock, models, TREE, others=[(100.0, (6.0, 0.0, 0.0)), (150.0, (0.0, 0.0, 0.0))])
    gm.down = (450.0, 550.0)
    controller = Controller(
        clock=clock,
        chargers=slots,
        meters=[gm],
        governor=SafetyGovernor({cid: Limits(fuse_limit_a=32.0) for cid in "ab"}),
        tick_s=1.0,
        circuits=TREE,
        circuit_only_meters=["gm"],
    )
    over: list[tuple[float, float]] = []  # (time, amps above the limit) with the other loads counted
    reasons: dict[int, str] = {}
    drawing: dict[int, tuple[float, float]] = {}
    task = asyncio.ensure_future(controller.run(duration_s=900))
    for second in range(1, 900):
        await clock.advance(1.0)
        worst = max(gm.physical())
        if worst > 20.0 + 1e-6:
            over.append((second, worst - 20.0))
        if second in (90, 140, 250, 420, 480, 700, 890):
            records = [controller.last_decision(c) for c in "ab"]
            reasons[second] = "; ".join(r.decision.reason for r in records if r is not None)
            drawing[second] = (models["a"].charging_current_a, models["b"].charging_current_a)
    snapshot = controller.snapshot()
    assert snapshot.meters["gm"].grid is False and snapshot.grid_power_w is None  # not a grid meter
    await clock.advance(2)
    await task
    await bus.close()
    for model in models.values():
        assert_governor_rules_held(model.record)
    # Before the oven: one box has 12 A, the other what the garage leaves (its noise aside).
    assert sorted(drawing[90]) == pytest.approx([8.0, 12.0], abs=0.2)
    assert "other loads 0.1 A on L1 (meter gm)" in reasons[90]  # the boxes' measurement noise
    # The oven's 6 A on L1 take their share: both boxes go on within the 14 A it leaves. Only
    # the seconds the boxes need to follow a step the meter saw after it happened may exceed it.
    assert "other loads 6.0 A on L1 (meter gm)" in reasons[140]
    assert sum(drawing[140]) == pytest.approx(14.0, abs=0.2) and min(drawing[140]) >= 6.0
    assert all(100 < t <= 105 for t, _ in over), over
    # Off at 150 s: after the 15 s hold the garage's 20 A are back.
    assert sorted(drawing[250]) == pytest.approx([8.0, 12.0], abs=0.2)
    assert sorted(drawing[420]) == pytest.approx([8.0, 12.0], abs=0.2)
    # The meter fails at 450 s: its last value holds for 15 s, then the garage counts as full.
    assert "meter gm failing for 31 s: no answer; other loads counted at 20 A" in reasons[480]
    assert drawing[480] == (0.0, 0.0)
    # Back at 550 s; the resume waits for the 5 minutes after the pause (~466 s).
    assert drawing[700] == (0.0, 0.0)
    assert sorted(drawing[890]) == pytest.approx([8.0, 12.0], abs=0.2)
