"""Build a controller on the in-memory model bus, and check the simulator's write record."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from surplus.chargers.amtron import AmtronCharger
from surplus.clock import Clock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.meter import Meter
from surplus.plugins import collect_strategies, make_plugin_manager
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel
from surplus.strategy import Strategy

SOFT_PAUSE_MAX_A = 5.99


def build_controller(
    clock: Clock,
    model: AmtronModel,
    *,
    fixed_current_a: float = 10,
    strategy: Strategy | None = None,
    fallback: str = "pause",
    meters: Sequence[Meter] = (),
    limits: Limits | None = None,
    mode: str = "fixed",
) -> tuple[Controller, ModelBus]:
    """A one-charger controller (id "wallbox", device id 50) in ``mode`` (default "fixed")."""
    bus = ModelBus({50: model}, clock)
    charger = AmtronCharger(bus, charger_id="wallbox", clock=clock, device_id=50, heartbeat_interval_s=3.0)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    options: dict[str, dict[str, Any]] = {"fixed": {"current_a": fixed_current_a}}
    strategies = {name: f(options.get(name, {})) for name, f in factories.items()}
    if strategy is not None:
        strategies[strategy.name] = strategy
    slot = ChargerSlot(
        charger=charger, strategies=strategies, mode=mode, fallback=fallback, strategy_options=options
    )
    governor = SafetyGovernor({"wallbox": limits or Limits()})
    controller = Controller(clock=clock, chargers=[slot], meters=meters, governor=governor, tick_s=1.0)
    return controller, bus


def assert_governor_rules_held(record: Any, *, min_spacing_s: float = 5.0) -> None:
    """Every current written is a soft pause or 6..32 A, never 0, and changes are >= 5 s apart."""
    currents = [w for w in record.writes if w.register == "CHARGING_CURRENT_EM"]
    for w in currents:
        assert w.value != 0, f"0 A written at {w.at_s} (the AMTRON reads it as 'no limit')"
        assert (0.01 <= w.value <= SOFT_PAUSE_MAX_A) or (6.0 <= w.value <= 32.0), f"bad current {w.value}"
    changes = [w for i, w in enumerate(currents) if i == 0 or w.value != currents[i - 1].value]
    for a, b in itertools.pairwise(changes):
        assert b.at_s - a.at_s >= min_spacing_s - 1e-9, (
            f"current changes {a.value}->{b.value} {b.at_s - a.at_s:.2f} s apart"
        )
    releases = [w for w in record.writes if w.register == "CHARGING_RELEASE_EM"]
    toggles = [w for i, w in enumerate(releases) if i == 0 or w.value != releases[i - 1].value]
    for a, b in itertools.pairwise(toggles):
        assert b.at_s - a.at_s >= min_spacing_s - 1e-9, "release toggled faster than every 5 s"
