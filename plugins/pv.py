"""Strategies "pv" and "minpv": charge from the PV surplus.

**The surplus** is what the car could draw without importing from the grid:
``car power - grid power - reserve_w`` (grid power is positive for import, so
exporting 2 kW while the car draws 1.4 kW means 3.4 kW are there for the car).
It does not depend on what the car draws now, so changing the current does not
feed back into the next decision. With a home battery (``battery_power_w`` on a
meter, positive while the battery charges): power flowing out of the battery is
never counted as surplus, so the car does not empty the house battery;
``battery: car_first`` also counts the power the battery is absorbing, so the
car gets it before the battery does (``house_first``, the default, leaves it to
the battery and the car gets what the battery does not take).

**Smoothing** is asymmetric: a falling surplus is followed within a few seconds
(``smoothing_down_s``, a time constant) so a cloud does not pull power from the
grid for long, a rising one more slowly (``smoothing_up_s``) so a gap in the
clouds does not make the car chase it. The current follows the smoothed surplus
on the phases in use; it changes at once when it moves by ``step_a`` or more,
and after ``SETTLE_S`` when a smaller change persists (noise does not cause writes,
a slow drift is still followed).

**Start and stop** have hysteresis in time: charging starts once the smoothed
surplus has carried the minimum current (6 A on the phases in use) for
``start_delay_s``; it stops after it has been too small for ``stop_delay_s``,
holding 6 A in between (so a passing cloud does not stop the car). "minpv"
never stops: it charges at least 6 A (on one phase where the box can switch)
and adds whatever surplus there is.

**Phases** (``phases: auto`` on a box that can switch, the default): three
phases when the smoothed surplus carries 6 A on all three (about 4.1 kW) for
``phase_up_delay_s``, one phase when it has not for ``phase_down_delay_s``. A
car that charges on fewer phases than the box offers is noticed from the phase
currents, and the amps are computed for the phases it really uses.

All of this is advice: the safety governor still enforces the limits, 5 s
between changes, 5 min between pause and resume, and the phase-switch interval.
The strategy keeps its timers between ticks; after a gap of more than
``RESET_AFTER_S`` (the mode was switched away, the data was stale) it starts
afresh from the present state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surplus.hookspecs import RegisterStrategy, hookimpl
from surplus.options import check_known, choice, number
from surplus.strategy import Strategy, StrategyContext
from surplus.types import MIN_CURRENT_A, ChargerState, Decision, Snapshot, Source

#: Phase currents above this count as "the car uses this phase".
PHASE_IN_USE_A = 1.0
#: A voltage outside this range is not trusted for the W -> A conversion.
PLAUSIBLE_VOLTAGE_V = (180.0, 260.0)
#: A change smaller than ``step_a`` is sent once it has persisted this long.
SETTLE_S = 60.0
#: After this long without a call the strategy forgets its timers and smoothing.
RESET_AFTER_S = 30.0

OPTIONS = (
    "phases",
    "reserve_w",
    "battery",
    "start_delay_s",
    "stop_delay_s",
    "smoothing_up_s",
    "smoothing_down_s",
    "step_a",
    "voltage_v",
    "phase_up_delay_s",
    "phase_down_delay_s",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PvSettings:
    """The validated options (see the module docstring; defaults here)."""

    #: "minpv": never pause, charge at least the minimum current.
    keep_minimum: bool = False
    #: 1 or 3 to pin the phases; None = automatic where the box can switch.
    phases: int | None = None
    reserve_w: float = 100.0
    car_first: bool = False
    start_delay_s: float = 60.0
    stop_delay_s: float = 180.0
    smoothing_up_s: float = 30.0
    smoothing_down_s: float = 5.0
    step_a: float = 0.5
    voltage_v: float = 230.0
    phase_up_delay_s: float = 300.0
    phase_down_delay_s: float = 180.0


def available_w(snapshot: Snapshot, state: ChargerState, settings: PvSettings) -> float:
    """Power the car could draw without importing: see the module docstring."""
    grid_w = snapshot.grid_power_w
    if grid_w is None:
        raise ValueError("no fresh grid-meter reading")
    battery_w = sum(
        m.battery_power_w
        for m in snapshot.meters.values()
        if m.error is None and m.battery_power_w is not None
    )
    available = state.power_total_w - grid_w - settings.reserve_w
    if battery_w < 0:  # the battery discharges: that power is not the sun's
        available += battery_w
    elif settings.car_first:
        available += battery_w
    return available


def phases_in_use(state: ChargerState) -> int:
    """Phases the car draws on now: fewer than the box offers for a 1- or 2-phase car."""
    offered = state.active_phases
    if state.charging:
        used = sum(
            1 for a in (state.current_l1_a, state.current_l2_a, state.current_l3_a) if a > PHASE_IN_USE_A
        )
        if 0 < used < offered:
            return used
    return offered


class PvStrategy:
    """One charger's PV-surplus strategy; keeps its timers between ticks."""

    def __init__(self, settings: PvSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._last_at: float | None = None
        self._smoothed_w = 0.0
        self._charging = False
        self._enough_since: float | None = None
        self._short_since: float | None = None
        self._three_since: float | None = None
        self._one_since: float | None = None
        self._phases = 3
        self._current_a: float | None = None
        #: (direction, since) of a small change that has not been sent yet.
        self._drift: tuple[int, float] | None = None

    def _restart(self, state: ChargerState, raw_w: float) -> None:
        self._smoothed_w = raw_w
        self._charging = state.charging or self.settings.keep_minimum
        self._enough_since = self._short_since = self._three_since = self._one_since = None
        self._phases = state.active_phases
        self._current_a = None
        self._drift = None

    def _smooth(self, raw_w: float, dt: float) -> float:
        s = self.settings
        tau = s.smoothing_up_s if raw_w > self._smoothed_w else s.smoothing_down_s
        self._smoothed_w += (raw_w - self._smoothed_w) * (1.0 - math.exp(-dt / tau) if tau > 0 else 1.0)
        return self._smoothed_w

    def _want_phases(self, state: ChargerState, ctx: StrategyContext, volts: float, now: float) -> int | None:
        """The phases to ask for (None: leave them), with the up/down delays."""
        s = self.settings
        if not ctx.phases_switchable or state.capabilities.grid_phases == 1:
            self._phases = state.active_phases
            return None
        if s.phases is not None:
            self._phases = s.phases
            return s.phases
        three_min_w = MIN_CURRENT_A * 3 * volts
        if self._smoothed_w >= three_min_w:
            self._one_since = None
            self._three_since = now if self._three_since is None else self._three_since
            if self._phases == 1 and (not self._charging or now - self._three_since >= s.phase_up_delay_s):
                self._phases = 3
        else:
            self._three_since = None
            self._one_since = now if self._one_since is None else self._one_since
            if self._phases == 3 and (not self._charging or now - self._one_since >= s.phase_down_delay_s):
                self._phases = 1
        return self._phases

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        state = snapshot.chargers[ctx.charger_id].state
        if state is None:
            raise ValueError("no charger reading")
        s = self.settings
        now = ctx.now_s
        raw_w = available_w(snapshot, state, s)
        if self._last_at is None or not 0 <= now - self._last_at <= RESET_AFTER_S:
            self._restart(state, raw_w)  # first call, a long gap, or time going backwards
            dt = 0.0
        else:
            dt = now - self._last_at
        smoothed = self._smooth(raw_w, dt)
        self._last_at = now

        line_v = volts(state, s.voltage_v)
        want_phases = self._want_phases(state, ctx, line_v, now)
        phases = self._phases if want_phases is not None else phases_in_use(state)
        if want_phases is not None and want_phases == state.active_phases:
            phases = min(phases, phases_in_use(state))  # a 1-phase car on a 3-phase box
        exact_a = smoothed / (line_v * phases)
        enough = exact_a >= MIN_CURRENT_A
        shown_a = max(math.floor(exact_a * 10) / 10, 0.0)  # the same rounding as the setpoint
        why = f"surplus {smoothed / 1000:.2f} kW = {shown_a:.1f} A on {phases} phase{'s' * (phases > 1)}"

        if not self._charging:
            self._enough_since = (
                (now if self._enough_since is None else self._enough_since) if enough else None
            )
            if self._enough_since is None or now - self._enough_since < s.start_delay_s:
                wait = (
                    ""
                    if self._enough_since is None
                    else f", starting in {s.start_delay_s - (now - self._enough_since):.0f} s"
                )
                return strategy_decision(ctx, charge=False, phases=want_phases, reason=f"pv: {why}{wait}")
            self._charging, self._enough_since = True, None
        if enough or s.keep_minimum:
            self._short_since = None
        else:
            self._short_since = now if self._short_since is None else self._short_since
            if now - self._short_since >= s.stop_delay_s:
                self._charging, self._short_since, self._current_a = False, None, None
                return strategy_decision(
                    ctx,
                    charge=False,
                    phases=want_phases,
                    reason=f"pv: {why}, below {MIN_CURRENT_A:g} A for {s.stop_delay_s:g} s",
                )
        target = min(max(math.floor(exact_a * 10) / 10, MIN_CURRENT_A), ctx.max_current_a)
        self._current_a = target = self._settle(target, ctx.max_current_a, now)
        if self._short_since is not None:
            why += f"; holding {MIN_CURRENT_A:g} A, stopping in {s.stop_delay_s - (now - self._short_since):.0f} s"
        elif exact_a < MIN_CURRENT_A:
            why += f"; minimum {MIN_CURRENT_A:g} A"
        return strategy_decision(
            ctx, charge=True, current_a=target, phases=want_phases, reason=f"{self.name}: {why}"
        )

    def _settle(self, target: float, max_a: float, now: float) -> float:
        """Hold the last current through small changes unless they persist.

        A change of ``step_a`` or more, or to a bound (6 A, the maximum), goes
        through at once; a smaller one only after it has pointed the same way
        for ``SETTLE_S`` (noise flips its sign, a real drift does not).
        """
        last = self._current_a
        if last is None or target == last or abs(target - last) >= self.settings.step_a:
            self._drift = None
            return target
        if target in (MIN_CURRENT_A, max_a):
            self._drift = None
            return target
        sign = 1 if target > last else -1
        if self._drift is None or self._drift[0] != sign:
            self._drift = (sign, now)
        if now - self._drift[1] >= SETTLE_S:
            self._drift = None
            return target
        return last


def strategy_decision(
    ctx: StrategyContext, *, charge: bool, reason: str, phases: int | None, current_a: float | None = None
) -> Decision:
    """A strategy's decision for the context's charger."""
    return Decision(
        charger_id=ctx.charger_id,
        source=Source.STRATEGY,
        charge=charge,
        current_a=current_a,
        phases=phases,
        reason=reason,
    )


def volts(state: ChargerState, nominal_v: float) -> float:
    """The box's own L1 voltage when it is plausible, else the nominal one (for W <-> A)."""
    low, high = PLAUSIBLE_VOLTAGE_V
    return state.voltage_l1_v if low <= state.voltage_l1_v <= high else nominal_v


def parse_settings(options: Mapping[str, Any], *, keep_minimum: bool) -> PvSettings:
    """Validate the options of "pv" / "minpv" (an OptionError names the bad one)."""
    check_known(options, OPTIONS)
    d = PvSettings()
    phases = choice(options, "phases", "auto", ("auto", 1, 3))
    return PvSettings(
        keep_minimum=keep_minimum,
        phases=None if phases == "auto" else int(phases),
        reserve_w=number(options, "reserve_w", d.reserve_w, lo=-5000, hi=50000, unit="W"),
        car_first=choice(options, "battery", "house_first", ("house_first", "car_first")) == "car_first",
        start_delay_s=number(options, "start_delay_s", d.start_delay_s, lo=0, hi=3600, unit="s"),
        stop_delay_s=number(options, "stop_delay_s", d.stop_delay_s, lo=0, hi=3600, unit="s"),
        smoothing_up_s=number(options, "smoothing_up_s", d.smoothing_up_s, lo=0, hi=600, unit="s"),
        smoothing_down_s=number(options, "smoothing_down_s", d.smoothing_down_s, lo=0, hi=600, unit="s"),
        step_a=number(options, "step_a", d.step_a, lo=0.1, hi=10, unit="A"),
        voltage_v=number(options, "voltage_v", d.voltage_v, lo=100, hi=260, unit="V"),
        phase_up_delay_s=number(options, "phase_up_delay_s", d.phase_up_delay_s, lo=0, hi=7200, unit="s"),
        phase_down_delay_s=number(
            options, "phase_down_delay_s", d.phase_down_delay_s, lo=0, hi=7200, unit="s"
        ),
    )


def make_pv(options: Mapping[str, Any]) -> Strategy:
    """Surplus only: pauses when the sun does not carry the minimum current."""
    return PvStrategy(parse_settings(options, keep_minimum=False), "pv")


def make_minpv(options: Mapping[str, Any]) -> Strategy:
    """At least the minimum current, plus the surplus."""
    return PvStrategy(parse_settings(options, keep_minimum=True), "minpv")


@hookimpl
def surplus_register_strategies(register: RegisterStrategy) -> None:
    register("pv", make_pv)
    register("minpv", make_minpv)
