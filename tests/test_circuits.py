"""Circuits (the shared fuse): the headroom computation as tables, then the loop on the fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from surplus.api import Override
from surplus.chargers.amtron import AmtronCharger
from surplus.circuits import Circuit, CircuitTree, Wiring, counted_load, on_grid, rotation_of
from surplus.clock import FakeClock
from surplus.governor import GovernorMemory, Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.modbus import registers as R
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.types import ChargerReading

from .factories import charger_state
from .loop_support import assert_governor_rules_held

# site (25 A per phase) -> garage (16 A); a and b in the garage, b wired L2-L3-L1; c on the site.
TREE = CircuitTree(
    {
        "site": Circuit(id="site", limit_a=25),
        "garage": Circuit(id="garage", limit_a=16, parent="site"),
    },
    {
        "a": Wiring(circuit="garage"),
        "b": Wiring(circuit="garage", rotation=rotation_of(["L2", "L3", "L1"])),
        "c": Wiring(circuit="site"),
    },
)

PAUSED = GovernorMemory(current_a=16.0, charging=False, release=False)


def sent(amps: float, phases: int = 3) -> GovernorMemory:
    return GovernorMemory(current_a=amps, charging=True, release=True, phases=phases)


def reading(cid: str, *, drawn: tuple[float, float, float] = (0, 0, 0), **state: Any) -> ChargerReading:
    """A fresh reading; the readback agrees with a paused box unless ``state`` says otherwise."""
    fields: dict[str, Any] = {"charging_release": False, "current_limit_a": 16.0}
    fields.update(state)
    l1, l2, l3 = drawn
    s = charger_state(cid, current_l1_a=l1, current_l2_a=l2, current_l3_a=l3, **fields)
    return ChargerReading(charger_id=cid, state=s, age_s=0.5, connected=True)


def unreachable(r: ChargerReading) -> ChargerReading:
    return dataclasses.replace(r, connected=False, age_s=120.0, error="no answer")


NOTHING = ChargerReading(charger_id="?", state=None)
FALLBACK_12A = dataclasses.replace(charger_state().config, master_lost_fallback_current_a=12)

# (name, {charger: (reading, memory)}, for, phases, expected headroom, circuit named in why)
CASES: list[tuple[str, dict[str, tuple[ChargerReading, GovernorMemory]], str, int, float, str]] = [
    (
        "others paused: the garage limit",
        {"b": (reading("b"), PAUSED), "c": (reading("c"), PAUSED)},
        "a",
        3,
        16.0,
        "garage",
    ),
    (
        "a 3-phase neighbour at 10 A",
        {"b": (reading("b", drawn=(9.5, 9.5, 9.5)), sent(10)), "c": (reading("c"), PAUSED)},
        "a",
        3,
        6.0,
        "garage",
    ),
    (
        "a 1-phase neighbour wired L2 first loads the grid's L2, not L1",
        {"b": (reading("b", drawn=(16, 0, 0), requested_phases=1), sent(16, 1)), "c": (reading("c"), PAUSED)},
        "a",
        1,
        16.0,
        "garage",
    ),
    (
        "the same neighbour leaves nothing on L2 for three phases",
        {"b": (reading("b", drawn=(16, 0, 0), requested_phases=1), sent(16, 1)), "c": (reading("c"), PAUSED)},
        "a",
        3,
        0.0,
        "garage",
    ),
    (
        "what a car draws above its setpoint counts",
        {"b": (reading("b", drawn=(12, 12, 12)), sent(6)), "c": (reading("c"), PAUSED)},
        "a",
        3,
        4.0,
        "garage",
    ),
    (
        "a box never read or written counts at its maximum",
        {"b": (NOTHING, GovernorMemory()), "c": (reading("c"), PAUSED)},
        "a",
        3,
        0.0,
        "garage",
    ),
    (
        "an unreachable box counts at its last setpoint",
        {"b": (unreachable(reading("b", drawn=(7.9, 8, 8))), sent(8)), "c": (reading("c"), PAUSED)},
        "a",
        3,
        8.0,
        "garage",
    ),
    (
        "an unreachable box whose own fallback is higher counts at that",
        {
            "b": (unreachable(reading("b", drawn=(7.9, 8, 8), config=FALLBACK_12A)), sent(8)),
            "c": (reading("c"), PAUSED),
        },
        "a",
        3,
        4.0,
        "garage",
    ),
    (
        "the site binds above the garage",
        {"b": (reading("b"), PAUSED), "c": (reading("c", drawn=(20, 20, 20)), sent(20))},
        "a",
        3,
        5.0,
        "site",
    ),
    (
        "a readback above what was sent counts (another master, a restart)",
        {
            "b": (reading("b", charging_release=True, current_limit_a=14.0), sent(6)),
            "c": (reading("c"), PAUSED),
        },
        "a",
        3,
        2.0,
        "garage",
    ),
    (
        "a soft-paused box (1 A with release on) counts what it draws",
        {
            "b": (reading("b", charging_release=True, current_limit_a=1.0), GovernorMemory()),
            "c": (reading("c"), PAUSED),
        },
        "a",
        3,
        16.0,
        "garage",
    ),
    (
        "0 A read back is 'no limit': the device maximum counts",
        {
            "b": (reading("b", charging_release=True, current_limit_a=0.0), GovernorMemory()),
            "c": (reading("c"), PAUSED),
        },
        "a",
        3,
        -16.0,
        "garage",
    ),
    (
        "c sees the garage's chargers on the site, rotated",
        {
            "a": (reading("a", drawn=(10, 0, 0), requested_phases=1), sent(10, 1)),
            "b": (reading("b", drawn=(12, 0, 0), requested_phases=1), sent(12, 1)),
        },
        "c",
        3,
        13.0,
        "site",
    ),
    (
        "c on one phase (its L1 = the grid's L1) keeps L2's load out of it",
        {
            "a": (reading("a", drawn=(10, 0, 0), requested_phases=1), sent(10, 1)),
            "b": (reading("b", drawn=(12, 0, 0), requested_phases=1), sent(12, 1)),
        },
        "c",
        1,
        15.0,
        "site",
    ),
]


@pytest.mark.parametrize(
    ("chargers", "target", "phases", "expected", "circuit"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_headroom(
    chargers: dict[str, tuple[ChargerReading, GovernorMemory]],
    target: str,
    phases: int,
    expected: float,
    circuit: str,
) -> None:
    limits = Limits(fuse_limit_a=16.0)
    loads = {}
    for cid, (r, memory) in chargers.items():
        r = dataclasses.replace(r, charger_id=cid)
        box, _ = counted_load(r, memory, limits)
        loads[cid] = TREE.grid_load(cid, box)
    room = TREE.headroom(target, loads, phases)
    assert room is not None
    assert room.amps == pytest.approx(expected)
    assert room.why.startswith(f"circuit {circuit}: ")


def test_a_charger_under_no_circuit_has_no_shared_headroom() -> None:
    assert TREE.headroom("elsewhere", {}, 3) is None


def test_rotation_moves_box_phases_onto_grid_phases() -> None:
    assert rotation_of(["L2", "L3", "L1"]) == (1, 2, 0)
    assert on_grid((16, 0, 0), (1, 2, 0)) == (0, 16, 0)
    assert on_grid((1, 2, 3), (2, 0, 1)) == (2, 3, 1)
    with pytest.raises(ValueError, match="L1, L2 and L3 once each"):
        rotation_of(["L1", "L1", "L2"])


def test_a_tree_with_a_loop_or_an_unknown_circuit_is_refused() -> None:
    loop = {"x": Circuit(id="x", limit_a=10, parent="y"), "y": Circuit(id="y", limit_a=10, parent="x")}
    with pytest.raises(ValueError, match="circuits loop"):
        CircuitTree(loop, {"a": Wiring(circuit="x")})
    with pytest.raises(ValueError, match="unknown circuit"):
        CircuitTree({"x": Circuit(id="x", limit_a=10)}, {"a": Wiring(circuit="nowhere")})


# --- the loop on the fake clock -------------------------------------------------------------------

#: Four boxes: two in a 16 A garage (b wired L2 first), and on the 32 A site a box with a
#: single-phase car wired L3 first, and a fourth box.
LOOP_TREE = CircuitTree(
    {"site": Circuit(id="site", limit_a=32), "garage": Circuit(id="garage", limit_a=16, parent="site")},
    {
        "a": Wiring(circuit="garage"),
        "b": Wiring(circuit="garage", rotation=(1, 2, 0)),
        "c": Wiring(circuit="site", rotation=(2, 0, 1)),
        "d": Wiring(circuit="site"),
    },
)


def model_grid_load(model: AmtronModel, rotation: tuple[int, int, int]) -> tuple[float, float, float]:
    """What a simulated box offers on each grid phase now (signalled current x its active phases)."""
    phases = 1 if model.switched_phases == 1 else 3
    amps = model.signaled_current_a
    drawn = model.charging_current_a
    box = [max(amps, drawn) if i < phases else 0.0 for i in range(3)]
    return on_grid(box, rotation)


def assert_within_circuits(
    tree: CircuitTree, models: dict[str, AmtronModel], samples: list[dict[str, float]]
) -> None:
    loads = {cid: model_grid_load(m, tree.wiring[cid].rotation) for cid, m in models.items()}
    for circuit_id, total in tree.phase_sums(loads).items():
        limit = tree.circuits[circuit_id].limit_a
        samples.append({f"{circuit_id}.L{g + 1}": total[g] for g in range(3)})
        for g in range(3):
            assert total[g] <= limit + 1e-6, f"circuit {circuit_id} L{g + 1}: {total[g]:.1f} A > {limit:g} A"


def four_boxes(
    clock: FakeClock, currents: dict[str, float]
) -> tuple[Controller, ModelBus, dict[str, AmtronModel]]:
    models = {
        "a": AmtronModel(clock, ev=EvProfile(max_current_a=32), seed=1),
        "b": AmtronModel(clock, ev=EvProfile(max_current_a=32), seed=2),
        "c": AmtronModel(clock, ev=EvProfile(max_current_a=32, phases=1), seed=3),
        "d": AmtronModel(clock, ev=EvProfile(max_current_a=32), seed=4),
    }
    device = {"a": 10, "b": 11, "c": 12, "d": 13}
    bus = ModelBus({device[cid]: m for cid, m in models.items()}, clock)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    slots = []
    for cid, amps in currents.items():
        charger = AmtronCharger(
            bus, charger_id=cid, clock=clock, device_id=device[cid], heartbeat_interval_s=3.0
        )
        options = {"fixed": {"current_a": amps}}
        strategies = {name: f(options.get(name, {})) for name, f in factories.items()}
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode="fixed", fallback="pause"))
    governor = SafetyGovernor({cid: Limits(fuse_limit_a=16.0) for cid in currents})
    controller = Controller(
        clock=clock, chargers=slots, meters=[], governor=governor, tick_s=1.0, circuits=LOOP_TREE
    )
    return controller, bus, models


async def test_four_boxes_never_exceed_any_circuit_per_phase() -> None:
    clock = FakeClock()
    controller, bus, models = four_boxes(clock, {"a": 12, "b": 12, "c": 10, "d": 14})
    samples: list[dict[str, float]] = []
    checked: list[int] = []
    for model in models.values():  # also right after every single write, not only once a second
        real_write = model.write

        def write(address: int, values: list[int], fc: int, _real: Any = real_write) -> None:
            _real(address, values, fc)
            assert_within_circuits(LOOP_TREE, models, [])
            checked.append(address)

        model.write = write  # type: ignore[method-assign]
    task = asyncio.ensure_future(controller.run(duration_s=900))
    notes: dict[int, str] = {}
    for second in range(900):
        await clock.advance(1.0)
        assert_within_circuits(LOOP_TREE, models, samples)
        if second == 30:
            # a has 12 A of the garage's 16 A, c 10 A of the site, d the site's last 10 A: b waits.
            b, d = controller.last_decision("b"), controller.last_decision("d")
            assert b is not None and d is not None
            assert not b.decision.charge and "paused: circuit site: 0.0 A left" in b.decision.reason
            assert d.decision.charge and "circuit site: 10.0 A left" in d.decision.reason
            assert models["d"].em_current_a == pytest.approx(10.0)
        if second == 60:  # a person turns a down to 6 A
            verdict = await controller.set_override("a", Override(current_a=6.0, reason="person"))
            assert verdict.outcome.value == "applied"
        if second == 420:  # a person asks b for 16 A: only what the circuits leave is given
            await controller.set_override("b", Override(current_a=16.0, reason="person"))
        if second == 430:
            b = controller.last_decision("b")
            assert b is not None and b.decision.charge
            notes[second] = b.decision.reason
            assert models["b"].em_current_a == pytest.approx(6.0)  # site: 32 - a 6 - c 10 - d 10
        if second == 600:  # c stops: b takes the rest of the garage, d the rest of the site
            controller.set_mode("c", "off")
    await clock.advance(2)
    await task
    await bus.close()
    for m in models.values():
        assert_governor_rules_held(m.record)
    assert len(checked) > 100  # heartbeats and setpoints
    assert "circuit site: 6.0 A left on" in notes[430]
    assert models["b"].em_current_a == pytest.approx(10.0)  # the garage: 16 - a 6
    assert models["d"].em_current_a == pytest.approx(14.0)  # its own 14 A: the site has 16 A left
    # The limits were used, not only kept.
    assert max(s.get("garage.L1", 0) for s in samples) == pytest.approx(16.0, abs=0.01)
    assert max(s.get("site.L2", 0) for s in samples) == pytest.approx(32.0, abs=0.01)


async def test_a_write_that_failed_but_was_done_still_counts_for_the_others() -> None:
    clock = FakeClock()
    controller, bus, models = four_boxes(clock, {"a": 12, "b": 12})
    failed: list[float] = []
    real_write = models["a"].write

    def write(address: int, values: list[int], fc: int) -> None:
        real_write(address, values, fc)  # the box takes it ...
        if address == R.CHARGING_RELEASE_EM.address and values == [1] and not failed:
            failed.append(clock.now())
            raise TimeoutError("no reply")  # ... but its reply is lost

    models["a"].write = write  # type: ignore[method-assign]
    task = asyncio.ensure_future(controller.run(duration_s=60))
    for _ in range(30):
        await clock.advance(1.0)
        assert_within_circuits(LOOP_TREE, {"a": models["a"], "b": models["b"]}, [])
    assert failed, "the failing write never happened"
    assert models["a"].em_current_a == 12.0 and models["a"].charging_current_a > 0
    b = controller.last_decision("b")
    assert b is not None and not b.decision.charge and "circuit garage: 4.0 A left" in b.decision.reason
    await clock.advance(32)
    await task
    await bus.close()


def test_the_controller_says_where_each_charger_sits() -> None:
    """getChargers and surplus_charger_info read this: the charger's circuit first, then up the tree."""
    controller, _bus, _models = four_boxes(FakeClock(), {"a": 6, "c": 6})
    assert controller.charger_setup("a").circuits == ("garage", "site")
    assert controller.charger_setup("c").circuits == ("site",)
    assert controller.charger_setup("a").priority == 1
    with pytest.raises(ValueError, match="unknown charger"):
        controller.charger_setup("zz")
