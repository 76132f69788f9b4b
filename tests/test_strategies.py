"""The built-in strategies "fixed" and "off": tables on a fake clock."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from surplus.clock import FakeClock
from surplus.options import OptionError
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.strategy import StrategyContext
from surplus.types import (
    ChargerReading,
    ChargerState,
    EvseState,
    Snapshot,
    Source,
)
from tests.factories import charger_state

STRATEGIES = collect_strategies(make_plugin_manager(load_entrypoints=False))


def make_state(charger_id: str, read_at_s: float, evse_state: int) -> ChargerState:
    """A 3-phase AMTRON that can switch phases; only ``evse_state`` varies here."""
    return charger_state(charger_id, read_at_s, evse_state=evse_state)


def snapshot(clock: FakeClock, *, evse_state: int | None) -> Snapshot:
    state = None if evse_state is None else make_state("wb1", clock.now(), evse_state=evse_state)
    reading = ChargerReading(charger_id="wb1", state=state, age_s=0.0, connected=state is not None)
    return Snapshot(at_s=clock.now(), chargers=MappingProxyType({"wb1": reading}))


def ctx(clock: FakeClock, *, max_current_a: float = 32.0, switchable: bool = True) -> StrategyContext:
    return StrategyContext(
        charger_id="wb1",
        now_s=clock.now(),
        wall_s=1_800_000_000.0 + clock.now(),
        min_current_a=6.0,
        max_current_a=max_current_a,
        phases_switchable=switchable,
    )


@pytest.mark.parametrize(
    ("options", "max_current_a", "switchable", "want_current_a", "want_phases"),
    [
        ({}, 32.0, True, 16.0, None),  # defaults: 16 A, phases untouched
        ({"current_a": 10}, 32.0, True, 10.0, None),
        ({"current_a": 6}, 32.0, True, 6.0, None),
        ({"current_a": 32}, 32.0, True, 32.0, None),
        ({"current_a": 32}, 16.0, True, 16.0, None),  # never above what the device signals
        ({"current_a": 12.5, "phases": 1}, 32.0, True, 12.5, 1),
        ({"current_a": 12, "phases": 3}, 32.0, True, 12.0, 3),
        ({"current_a": 12, "phases": 1}, 32.0, False, 12.0, None),  # hardware cannot switch
    ],
)
@pytest.mark.parametrize(
    "evse_state", [EvseState.CHARGING, EvseState.CONNECTED, EvseState.IDLE, None], ids=str
)
def test_fixed_charges_at_the_configured_current(
    options: dict[str, Any],
    max_current_a: float,
    switchable: bool,
    want_current_a: float,
    want_phases: int | None,
    evse_state: int | None,
) -> None:
    # Also with no car (IDLE) or no data: stay released so a car that plugs in starts at once.
    clock = FakeClock()
    strategy = STRATEGIES["fixed"](options)
    for _ in range(3):  # the same answer on every tick: pure, no hidden state
        decision = strategy.decide(
            snapshot(clock, evse_state=evse_state),
            ctx(clock, max_current_a=max_current_a, switchable=switchable),
        )
        assert decision.charger_id == "wb1"
        assert decision.source is Source.STRATEGY
        assert decision.charge is True
        assert decision.current_a == want_current_a
        assert decision.phases == want_phases
        assert decision.lock is None
        clock.set(clock.now() + 1.0)
    assert strategy.name == "fixed"


@pytest.mark.parametrize("evse_state", [EvseState.CHARGING, EvseState.IDLE, None], ids=str)
def test_off_always_pauses(evse_state: int | None) -> None:
    clock = FakeClock()
    strategy = STRATEGIES["off"]({})
    for _ in range(3):
        decision = strategy.decide(snapshot(clock, evse_state=evse_state), ctx(clock))
        assert (decision.charger_id, decision.source, decision.charge) == ("wb1", Source.STRATEGY, False)
        assert decision.pause_kind is None  # the charger's configured pause kind applies
        clock.set(clock.now() + 60.0)
    assert strategy.name == "off"


@pytest.mark.parametrize(
    ("name", "options", "option", "fragment"),
    [
        ("fixed", {"current_a": 5}, "current_a", "5 A is below the minimum 6 A"),
        ("fixed", {"current_a": 33}, "current_a", "33 A is above the maximum 32 A"),
        ("fixed", {"current_a": "10"}, "current_a", "expected a number"),
        ("fixed", {"current_a": True}, "current_a", "expected a number"),
        ("fixed", {"phases": 2}, "phases", "2 is not one of 1, 3, null"),
        ("fixed", {"phases": True}, "phases", "not one of"),
        ("fixed", {"curent_a": 10}, "curent_a", "did you mean 'current_a'?"),
        ("off", {"current_a": 10}, "current_a", "takes no options"),
    ],
)
def test_bad_options_name_the_option(name: str, options: dict[str, Any], option: str, fragment: str) -> None:
    with pytest.raises(OptionError) as info:
        STRATEGIES[name](options)
    assert info.value.option == option
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
