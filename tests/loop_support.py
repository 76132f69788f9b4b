"""Build a controller on the in-memory model bus, and check the simulator's write record."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from surplus.chargers.amtron import AmtronCharger
from surplus.clock import Clock, FakeClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.meter import Meter, MeterEnv
from surplus.plugins import collect_meters, collect_strategies, make_plugin_manager
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.strategy import Strategy, StrategyInfo
from surplus.types import MeterReading

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
    strategy_infos: Mapping[str, StrategyInfo] | None = None,
) -> tuple[Controller, ModelBus]:
    """A one-charger controller (id "wallbox", device id 50) in ``mode`` (default "fixed");
    ``strategy_infos``: what the strategies say about themselves (default: the built-ins')."""
    bus = ModelBus({50: model}, clock)
    charger = AmtronCharger(bus, charger_id="wallbox", clock=clock, device_id=50, heartbeat_interval_s=3.0)
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    options: dict[str, dict[str, Any]] = {"fixed": {"current_a": fixed_current_a}}
    strategies = {name: f(options.get(name, {})) for name, f in factories.items()}
    if strategy is not None:
        strategies[strategy.name] = strategy
    slot = ChargerSlot(charger=charger, strategies=strategies, mode=mode, fallback=fallback)
    governor = SafetyGovernor({"wallbox": limits or Limits()})
    controller = Controller(
        clock=clock,
        chargers=[slot],
        meters=meters,
        governor=governor,
        tick_s=1.0,
        strategy_infos=strategy_infos,
    )
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


@dataclass
class RecordingMeter:
    """Passes a meter through and keeps every grid reading (one per tick)."""

    inner: Meter
    grid_w: list[float] = field(default_factory=list)

    @property
    def meter_id(self) -> str:
        return self.inner.meter_id

    async def start(self) -> None:
        await self.inner.start()

    async def read(self) -> MeterReading:
        reading = await self.inner.read()
        self.grid_w.append(reading.grid_power_w)
        return reading

    async def stop(self) -> None:
        await self.inner.stop()


@dataclass(frozen=True, kw_only=True)
class DayResult:
    """Energy of a replayed stretch of a day, with and without the car."""

    car_wh: float
    #: What the house alone would have exported / imported over the same time.
    export_alone_wh: float
    import_alone_wh: float
    import_with_car_wh: float
    current_writes: int
    phase_switches: int
    record: Any

    @property
    def extra_import_wh(self) -> float:
        """Grid energy the car caused."""
        return self.import_with_car_wh - self.import_alone_wh

    @property
    def surplus_used(self) -> float:
        """Share of the house's export that went into the car instead."""
        return (self.car_wh - self.extra_import_wh) / self.export_alone_wh if self.export_alone_wh else 0.0


async def replay_day(
    mode: str,
    *,
    hours: float,
    meter_options: Mapping[str, Any],
    ev: EvProfile | None = None,
    strategy: Strategy | None = None,
    fixed_current_a: float = 10,
) -> DayResult:
    """Run the real loop, driver, governor and AMTRON model with the simulated meter on a fake clock."""
    clock = FakeClock()
    model = AmtronModel(clock, ev=ev or EvProfile(soc=0.05, capacity_wh=100_000))
    simulated = collect_meters(make_plugin_manager(load_entrypoints=False))["simulated"]
    env = MeterEnv(clock=clock, charger_power_w=lambda: model.charging_power_w)
    meter = RecordingMeter(simulated("grid", meter_options, env))
    controller, bus = build_controller(
        clock, model, meters=[meter], mode=mode, strategy=strategy, fixed_current_a=fixed_current_a
    )
    energy_at_start = model.energy_total_wh
    task = asyncio.ensure_future(controller.run(duration_s=hours * 3600))
    await clock.advance(hours * 3600 + 1)
    await task
    await bus.close()

    alone_clock = FakeClock()
    alone = simulated("grid", meter_options, MeterEnv(clock=alone_clock, charger_power_w=lambda: 0.0))
    baseline = []
    for _ in meter.grid_w:
        baseline.append((await alone.read()).grid_power_w)
        await alone_clock.advance(1.0)
    writes = model.record.writes
    currents = [w.value for w in writes if w.register == "CHARGING_CURRENT_EM"]
    return DayResult(
        car_wh=model.energy_total_wh - energy_at_start,
        export_alone_wh=sum(-g for g in baseline if g < 0) / 3600,
        import_alone_wh=sum(g for g in baseline if g > 0) / 3600,
        import_with_car_wh=sum(g for g in meter.grid_w if g > 0) / 3600,
        current_writes=sum(1 for i, v in enumerate(currents) if i == 0 or v != currents[i - 1]),
        phase_switches=sum(1 for w in writes if w.register == "REQUESTED_PHASES"),
        record=model.record,
    )
