"""The frozen state the controller publishes once per tick, and that readers read (and nothing else)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from surplus.clock import FakeClock
from surplus.loop import Controller
from surplus.metrics import metrics_endpoint
from surplus.rpc import build_methods
from surplus.rpc_health import meter_health
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.state import ChargerView, LoopState, Override, StateBoard
from surplus.types import Outcome, Snapshot

from .loop_support import build_controller


async def _ticks(clock: FakeClock, n: int) -> tuple[Controller, ModelBus, list[LoopState]]:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=10)
    seen: list[LoopState] = []
    controller.subscribe(seen.append)
    await controller.start()
    for _ in range(n):
        await controller.tick()
        await clock.advance(1.0)
    return controller, bus, seen


async def test_each_tick_publishes_one_frozen_state_with_mode_override_and_decision() -> None:
    clock = FakeClock()
    controller, bus, seen = await _ticks(clock, 3)
    assert len(seen) == 3  # one per tick, to every listener
    first, last = seen[0], seen[-1]
    assert last is controller.published()
    assert last.loop is not None and last.loop.ticks == 3 and first.loop is not None and first.loop.ticks == 1
    view = last.charger("wallbox")
    assert view.mode == "fixed" and view.override is None
    assert view.decision is not None and view.decision.at_s == last.snapshot.at_s  # each value with its time
    assert view.decision.decision.current_a == 10
    reading = last.snapshot.chargers["wallbox"]
    assert reading.state is not None and reading.state.read_at_s <= last.snapshot.at_s
    # The 10 A were written once; the other ticks found them in place.
    assert view.writes == 1 and view.verdicts[Outcome.APPLIED] == 1 and view.verdicts[Outcome.UNCHANGED] == 2
    # Frozen: neither the state nor its parts can be changed by a reader.
    with pytest.raises(dataclasses.FrozenInstanceError):
        last.snapshot = Snapshot(at_s=0.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):  # a named tuple
        view.mode = "pv"  # type: ignore[misc]
    with pytest.raises(TypeError):
        last.chargers["wallbox"] = view  # type: ignore[index]
    with pytest.raises(TypeError):
        view.verdicts[Outcome.APPLIED] = 0  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown charger 'nope'"):
        last.charger("nope")

    # A person's change is published at once as a new state; the old one stays as it was.
    clock_at = clock.now()
    controller.set_mode("wallbox", "off")
    changed = controller.published()
    assert changed is not last and last.charger("wallbox").mode == "fixed"
    assert changed.charger("wallbox").mode == "off" and changed.charger("wallbox").mode_at_s == clock_at
    verdict = await controller.set_override("wallbox", Override(current_a=8.0, reason="test"))
    assert verdict.outcome is Outcome.SCHEDULED  # 5 s between current changes: later, but it holds
    ov = controller.published().charger("wallbox")
    assert ov.override is not None and ov.override.current_a == 8.0 and ov.override_at_s == clock.now()
    assert ov.decision is not None and ov.decision.override == ov.override
    assert len(seen) == 3  # listeners hear about ticks only
    await _close(controller, bus)


async def _close(controller: Controller, bus: ModelBus) -> None:
    controller.stop(hurry=True)  # the fake clock stands still: no waiting for a spacing rule
    await controller.shutdown()
    await bus.close()


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise KeyError(name)


async def test_metrics_rpc_and_health_read_the_published_state_only() -> None:
    """Publish a state that differs from the loop's own records: the readers show the published one."""
    clock = FakeClock()
    controller, bus, _seen = await _ticks(clock, 2)
    real = controller.published()
    fake_view = ChargerView(charger_id="wallbox", mode="pv", override=Override(charge=False), writes=41)
    board: StateBoard = controller.board
    board.publish(dataclasses.replace(real, chargers=MappingProxyType({"wallbox": fake_view})), notify=False)
    assert controller.get_mode("wallbox") == "pv"  # the facade reads it too
    text, _ = metrics_endpoint(controller)()
    body = text.decode()
    assert _metric(body, "surplus_charger_mode", charger="wallbox", mode="pv") == 1
    assert _metric(body, "surplus_charger_override_active", charger="wallbox") == 1
    assert _metric(body, "surplus_charger_writes_total", charger="wallbox") == 41
    assert _metric(body, "surplus_ticks_total") == 2
    methods = {m.name: m.handler for m in build_methods(controller)}
    got = methods["getMode"]({"chargerId": "wallbox"})
    assert got["data"]["mode"] == "pv"
    assert methods["getDecision"]({"chargerId": "wallbox"})["data"]["decision"] is None
    _meters, degraded = meter_health(controller)
    assert degraded == []
    await _close(controller, bus)


async def test_a_meter_sees_the_chargers_power_through_the_board_not_the_loop() -> None:
    """runner.py gives meters ``board.charger_power_w``: 0 before the first state, then the chargers' sum."""
    clock = FakeClock()
    board = StateBoard()
    assert board.charger_power_w() == 0.0
    controller, bus, _seen = await _ticks(clock, 5)
    board.publish(controller.published())
    reading = controller.published().snapshot.chargers["wallbox"]
    assert reading.state is not None and reading.state.power_total_w > 1000  # charging at 10 A
    assert board.charger_power_w() == reading.state.power_total_w
    await _close(controller, bus)
