"""Strategy "schedule": charge from the sun, and from the grid when the departure needs it.

For a car that must leave at a given time with a given amount of energy added.
Until the plan needs the grid it charges exactly like "pv" (an inner
:class:`~surplus_plugins.pv.PvStrategy` with the ``pv`` options decides).

**The plan.** The energy still needed is ``energy_kwh`` minus what the box
counted in this plug-in session (``session_energy_wh``; a new session starts at
zero). At ``plan_current_a`` (default: the device maximum) on the phases the
car will use, that takes ``needed / power``; the plan starts that long plus
``margin_min`` before the next ``departure`` (a local time on one of ``days``).
From then until the departure, or until the target is met, it charges at
``plan_current_a`` on three phases where the box can switch, sun or not, and
keeps going even if the sun made the estimate look early (no stop-start as the
estimate moves). Once the target is met only the sun charges again. Times are
computed in Unix seconds from the zone's rules, so a DST change between the
plan start and the departure does not shift the plan by an hour.

**Cheap-tariff windows** (``windows``: start, end, current_a; overnight
windows such as 22:00-06:00 wrap past midnight) charge at least the window's
current while they are open, with or without a car (a car that plugs in during
the window starts at once, as in "fixed").

Whenever the grid part and the sun both want to charge, the one that gives more
power wins. Without any grid meter configured the sun part is off and
"schedule" is a timer (plan and windows only). With no car connected there is
no plan. The estimate assumes the car draws the plan current; ``margin_min``
covers a car that draws less and the governor's 5 minutes between pause and
resume.

The options are checked in :mod:`.schedule_settings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from surplus.hookspecs import RegisterStrategy, hookimpl
from surplus.strategy import Strategy, StrategyContext
from surplus.types import ChargerState, Decision, Snapshot

from .pv import PvStrategy
from .pv_sun import phases_in_use, strategy_decision, volts
from .schedule_settings import DAY_NAMES, ScheduleSettings, parse_schedule

#: Before a plan starts, the box is put on the plan's phases this long ahead: the governor
#: holds a phase switch up to its interval (5 min by default) after the last one.
PREPARE_S = 15 * 60.0


@dataclass(frozen=True, slots=True)
class _GridWish:
    """A reason to charge from the grid: at least ``current_a`` on ``phases``."""

    current_a: float
    phases: int | None
    #: Phases used to compare its power with the sun's.
    power_phases: int
    why: str


class ScheduleStrategy:
    """One charger's departure plan on top of a PV strategy; keeps the plan between ticks."""

    def __init__(self, settings: ScheduleSettings, name: str = "schedule") -> None:
        self.settings = settings
        self.name = name
        self.pv = PvStrategy(settings.pv, "pv")
        #: Unix time of the departure whose plan has started (it runs until then or the target).
        self._running_for: float | None = None
        #: Phases this session's car was seen to draw on when the box offered the plan's phases.
        self._car_phases: int | None = None
        #: This tick's plan has not started yet (the reason says "until then").
        self._waiting = False
        #: Unix time the waiting plan starts.
        self._plan_start_s = math.inf

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        """The sun's decision, raised to the plan's or a window's current while they need the grid."""
        state = snapshot.chargers[ctx.charger_id].state
        if state is None:
            raise ValueError("no charger reading")
        sun = self._sun(snapshot, ctx)
        local_now = self.settings.local(ctx.wall_s)
        wishes: list[_GridWish] = []
        plan_phases = 3 if ctx.phases_switchable and state.capabilities.grid_phases == 3 else None

        self._waiting = False
        if state.vehicle_connected:
            status, wish = self._plan(state, ctx, local_now, plan_phases)
            if wish is not None:
                wishes.append(wish)
        else:
            self._running_for = self._car_phases = None
            status = "no car connected"

        minute = local_now.hour * 60 + local_now.minute + local_now.second / 60
        for window in self.settings.windows:
            if window.contains(minute):
                current = min(window.current_a, ctx.max_current_a)
                wishes.append(
                    _GridWish(
                        current,
                        plan_phases,
                        plan_phases or state.active_phases,
                        f"cheap window {window.label}, at least {current:g} A",
                    )
                )
                break
        if not wishes:
            until = "until then " if self._waiting else ""
            reason = f"{self.name}: {status}; {until}{sun.reason}"
            phases = sun.phases
            if self._waiting and plan_phases is not None and ctx.wall_s >= self._plan_start_s - PREPARE_S:
                # The plan starts soon: be on its phases by then (a switch has its own minimum interval).
                phases = plan_phases
            return strategy_decision(
                ctx,
                charge=sun.charge,
                current_a=sun.current_a,
                phases=phases,
                reason=reason,
                figures=sun.figures,
            )

        grid = max(wishes, key=lambda w: w.current_a * w.power_phases)
        # A window and a waiting plan: say both (the plan's status is not a wish then).
        why = grid.why if grid.why == status else f"{grid.why}; {status}"
        if sun.charge and sun.current_a is not None:
            sun_phases = sun.phases or state.active_phases
            if sun.current_a * sun_phases > grid.current_a * grid.power_phases:
                reason = f"{self.name}: {why}; the sun gives more: {sun.reason}"
                return strategy_decision(
                    ctx,
                    charge=True,
                    current_a=sun.current_a,
                    phases=sun.phases,
                    reason=reason,
                    figures=sun.figures,
                )
        return strategy_decision(
            ctx,
            charge=True,
            current_a=grid.current_a,
            phases=grid.phases,
            reason=f"{self.name}: {why}",
            figures=sun.figures,
        )

    def _sun(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        """What "pv" would do (a pause when no meter tells the surplus: the plan goes on)."""
        if snapshot.grid_power_w is None:
            why = "no fresh grid-meter reading" if snapshot.meters else "no grid meter"
            return strategy_decision(ctx, charge=False, phases=None, reason=f"pv: {why}, the sun part is off")
        return self.pv.decide(snapshot, ctx)

    def _plan(
        self, state: ChargerState, ctx: StrategyContext, local_now: datetime, plan_phases: int | None
    ) -> tuple[str, _GridWish | None]:
        """The plan's status line, and its grid wish once it has started."""
        s = self.settings
        needed_wh = max(s.energy_wh - state.session_energy_wh, 0.0)
        if needed_wh <= 0:
            self._running_for = None
            got = state.session_energy_wh / 1000
            return f"target {s.energy_wh / 1000:g} kWh reached ({got:.1f} kWh this session)", None
        departure = s.next_departure(ctx.wall_s)
        if departure is None:  # not possible with a non-empty ``days``; kept total
            self._running_for = None
            return "no departure day configured", None
        departure_s, departure_local = departure
        if self._running_for != departure_s:
            self._running_for = None  # that departure has passed: a new plan
        current_a = max(min(s.plan_current_a or ctx.max_current_a, ctx.max_current_a), ctx.min_current_a)
        phases = self._estimate_phases(state, plan_phases)
        power_w = current_a * volts(state, s.pv.voltage_v) * phases
        start_s = departure_s - s.margin_s - needed_wh / power_w * 3600.0
        by = f"{departure_local:%H:%M} ({DAY_NAMES[departure_local.weekday()]})"
        needed = f"{needed_wh / 1000:.1f} kWh"
        if self._running_for is None and ctx.wall_s < start_s:
            start_local = s.local(start_s)
            starts = f"{start_local:%H:%M}"
            if start_local.date() != local_now.date():
                starts = f"{DAY_NAMES[start_local.weekday()]} {starts}"
            self._waiting = True
            self._plan_start_s = start_s
            return f"{needed} still needed by {by}, plan starts {starts}", None
        self._running_for = departure_s
        on = f"{phases} phase{'s' * (phases > 1)}"
        why = f"plan running, {current_a:g} A on {on} until {needed} more or {by}"
        rate_w = state.power_total_w if state.charging and state.power_total_w > 0 else power_w
        done_s = ctx.wall_s + needed_wh / rate_w * 3600.0
        if done_s > departure_s:
            why += f"; late: at this rate done at {s.local(done_s):%H:%M}"
        return why, _GridWish(current_a, plan_phases, phases, why)

    def _estimate_phases(self, state: ChargerState, plan_phases: int | None) -> int:
        """Phases the car will draw on during the plan (a 1- or 2-phase car is remembered)."""
        box = plan_phases or state.active_phases
        if state.charging and state.active_phases == box:
            self._car_phases = phases_in_use(state)
        return min(box, self._car_phases) if self._car_phases else box


def make_schedule(options: Mapping[str, Any]) -> Strategy:
    """PV surplus, plus the grid when a departure needs it (and in cheap windows)."""
    return ScheduleStrategy(parse_schedule(options))


@hookimpl
def surplus_register_strategies(register: RegisterStrategy) -> None:
    register(
        "schedule",
        make_schedule,
        uses_meter=True,  # its sun part; the plan and the windows go on without a meter
        summary="the PV surplus, plus the grid when a departure needs it (and in cheap windows)",
        options={
            "departure": "07:00",
            "energy_kwh": ScheduleSettings().energy_wh / 1000,
            "days": None,
            "timezone": None,
            "plan_current_a": None,
            "margin_min": ScheduleSettings().margin_s / 60,
            "pv": {},
            "windows": [],
        },
    )
