"""Strategies "pv" and "minpv": charge from the PV surplus.

**The surplus** is what the car could draw without importing from the grid:
``car power - grid power - reserve_w`` (grid power is positive for import, so
exporting 2 kW while the car draws 1.4 kW means 3.4 kW are there for the car).
It does not depend on what the car draws now, so changing the current does not
feed back into the next decision. With a home battery (``battery_power_w`` on a
meter, positive while it charges): power flowing out of the battery is never
counted as surplus, so the car does not empty the house battery;
``battery: car_first`` also counts the power the battery is absorbing, so the
car gets it before the battery does (``house_first``, the default, leaves it to
the battery and the car gets what the battery does not take). Where a meter
reports the battery's state of charge: ``battery_soc_min`` gives the car the
battery's charging power once the battery is at least that full (below it the
battery comes first), and ``battery_to_car_soc`` lets a battery above that charge
discharge into the car (by default it never does).

**Following the sun.** The loop ticks every second and the governor lets a
new current through every 5 s, so the current follows the surplus as it is:
a falling surplus at once (``smoothing_down_s``, default 0), a rising one once
it has held for ``smoothing_up_s`` (default 3 s: three readings), in one step,
so a bright second or two does not pull the car up (after a write the governor
holds the current for 5 s, so a blip followed would be imported for 5 s) and a
step in the sun is one write, landing a margin below the surplus (the meters
jitter). Changes smaller than ``step_a`` follow the surplus's mean (see
:meth:`PvStrategy._settle`), so meter noise causes no writes and does not keep
the car a notch above the sun. For FOLLOW_S after the cars' power moves (a new
current, a start, the end of the box's switching pause, another charger) the
last surplus read before stands in for the readings: until the car has
followed, a grid meter a few seconds behind the box shows the move itself as a
step in the sun (see :meth:`PvStrategy._unmixed`). A meter further behind is
measured on those moves (:class:`MeterLag`) and waited for as long. A meter
that jitters from second to second has its noise measured and averaged out,
its steps kept (:class:`Denoise`); an exact one passes unchanged.

**Each rule prices what it costs, in energy**, an imported Wh counting
``import_weight`` (3) Wh of sun given away (the import is paid in full; sun
that goes to the grid earns the feed-in and is often made up later), more for
a car whose last sessions ended full while the sun still shone (:class:`FullCars`:
sun that a ride takes is worth nothing to a car that fills anyway, and its
import then displaces sun at the end; up to FULL_CAR_WEIGHT). The box's
own rules are fixed: a resume comes at least 5 minutes after a pause
(``resume_at_s`` in the context), a phase switch while the car draws stops it
for the box's switching pause (PHASE_SWITCHING_PAUSE, 0x0314), a paused box
switches for free, and the governor spaces switches by
``limits.phase_switch_interval_min``. So:

* *Pause or ride through?* When the surplus no longer carries 6 A, the car is
  held at 6 A. A pause costs the sun the car cannot take for the next 5
  minutes, estimated from the last ten (the power the car could take from the
  sun, on average). Riding costs its weighted import less the little sun it
  still takes (which a pause would give away). The car rides through while
  that stays below the pause's price; ``stop_delay_s`` is the longest. A short
  cloud is ridden through, an overcast afternoon is not.
* *Three phases at 6 A or one at its most* (:func:`three_phase_gain_w`). Between
  one phase's maximum (16 A: 3.7 kW) and three phases' minimum (4.1 kW) three
  phases at 6 A take more sun than one, for a little import; while the sun they
  add is larger than that import, weighted, they are held (this is not a dip: no
  ride-through, no ``stop_delay_s``) and reached from one phase.
* *Three phases down to one.* When three phases are not worth holding, their
  cost (the weighted import less the sun they add over one phase) is counted
  against what the switch costs: the sun lost during the box's switching
  pause, and the switch interval on one phase at what one phase left behind
  lately (on one phase nothing helps against returning sun until the interval
  is over, unlike a dip on three phases, see below). A deep dip switches
  within seconds, a shallow one rides on. ``phase_down_delay_s`` is the
  longest.
* *One phase up to three.* When three phases can be carried, the power that
  one phase leaves on the table is counted until it pays for the switching
  pause (on 8 kW that is about a minute); ``phase_up_delay_s`` is the longest
  wait once the sun carries three phases (just below their minimum, where
  three at 6 A would import, only the account decides: there a forced switch
  flapped back within minutes on overcast days).
  The dips that may follow within the switch interval are not charged to the
  switch: each is priced when it comes (ridden at 6 A on three phases while
  that costs less than a pause). Charging the switch with what such dips cost
  lately (an earlier rule) made it dearest just as the sun came back, because
  a bright spell follows a dip: on cloudy days kept out of tuning the box went
  to three phases minutes after a 5 s controller and took less sun.
* *Recent spells* (:class:`Spells`): how long the last dips and bright spells
  lasted predicts the present one; a dip or a spell that is long by that
  measure is acted on at once, a short one is left to the accounts above.
  Before the day's first spell of three-phase sun has ended, how long the sun
  has held a level lately (:class:`Levels`) stands in for it on the way up,
  where the sun is far enough above three phases' minimum that a level's
  typical change would still leave them carried: on a day that moves in steps
  the first switch goes at once, under fast clouds the account decides.
* *Start.* A paused box starts on three phases when they are carried, else on
  one (switching costs nothing then), once the surplus has carried 6 A for
  ``start_delay_s`` and the 5 minutes since the last pause are over.
* *A car that takes nothing.* Once the box has offered the car 6 A or more for
  ``IDLE_S`` (5 minutes, plus the box's switching pause) and the car has drawn
  nothing (it is full, or waits on a timer of its own), the sun is no longer
  followed: the current stays where it is and the phases as they are (a start
  after a pause takes the sun's current on them), until the car draws again
  (then at once). Sun missed costs nothing there, and a full car took 48 writes
  and 15 phase switches in an afternoon of 15-minute clouds before this rule. A
  dip the sun cannot carry is still paused as above, so a full car is not left
  released into the night. With several chargers sharing the surplus, the site
  finds such a car with the same rule (:class:`surplus.strategy.IdleCar`) and
  gives it only what the others cannot take (:mod:`surplus.sharing`).

The current is always computed for the phases the box will really have: a
switch the governor still holds does not change the amps. "minpv" never
pauses: it charges at least 6 A (on one phase where the box can switch) and
adds whatever surplus there is.

All of this is advice: the safety governor still enforces the limits. The
strategy keeps its timers between ticks; after a gap of more than
``RESET_AFTER_S`` (the mode was switched away, the data was stale) it starts
afresh from the present state.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any

from surplus.hookspecs import RegisterStrategy, hookimpl
from surplus.strategy import IdleCar, Strategy, StrategyContext
from surplus.types import MIN_CURRENT_A, ChargerState, Decision, Snapshot, current_text

from .pv_sun import (
    CAR_MOVE_A,
    DEFAULTS,
    FOLLOW_S,
    PAUSE_HOLD_S,
    RESET_AFTER_S,
    RISE_READINGS,
    RISE_SIGMAS,
    SESSIONS_KEPT,
    SETTLE_DOWN_S,
    SETTLE_MARGIN_A,
    SETTLE_S,
    TYPICAL_SUN_S,
    UP_GAP_A,
    VOLTS_S,
    Denoise,
    FullCars,
    HeldReadings,
    Levels,
    MeterLag,
    PvSettings,
    Spells,
    available_w,
    floor_notch,
    grid_age_s,
    kwh_text,
    lag_note,
    level_band_w,
    margin_a,
    parse_settings,
    phases_in_use,
    plural,
    strategy_decision,
    three_phase_gain_w,
    volts,
)


class PvStrategy:
    """One charger's PV-surplus strategy; keeps its timers and energy accounts between ticks."""

    def __init__(self, settings: PvSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._last_at: float | None = None
        self._smoothed_w = 0.0
        #: The surplus the last decision acted on (smoothed; this charger's share).
        self._sun_w = 0.0
        #: (time, surplus) of the last ``smoothing_up_s`` seconds.
        self._recent: deque[tuple[float, float]] = deque()
        #: Averages over TYPICAL_SUN_S: the power the car could have taken from the sun, and
        #: what one phase leaves behind where three would take more.
        self._typical_w = 0.0
        self._one_short_w = 0.0
        self._charging = False
        self._enough_since: float | None = None
        #: A dip being ridden through: when it began and the import it has cost (Wh).
        self._dip_since: float | None = None
        self._dip_wh = 0.0
        self._dip_cost_wh = 0.0
        #: Three phases that are not worth holding: since when, the import of holding them and
        #: its cost (weighted, less the sun they took over one phase) (Wh).
        self._low_since: float | None = None
        self._low_wh = 0.0
        self._low_cost_wh = 0.0
        #: Three phases held at 6 A below their minimum because they take more sun than one.
        self._three_at_minimum = False
        #: Three phases that could be carried: since when, and the power one phase left behind (Wh).
        self._high_since: float | None = None
        self._high_wh = 0.0
        self._current_a: float | None = None
        #: Whether the car has drawn nothing for IDLE_S though offered 6 A or more.
        self._idle = IdleCar()
        #: How often the car's sessions end full, and what an import weighs for it (from the
        #: session history when there is one; else kept as long as the process runs, and
        #: ``bench/days_in_a_row.py`` hands it from one day's pv to the next).
        self.full_cars = FullCars()
        self._weight = settings.import_weight
        #: (time, amps) of the surplus since the last change, at most SETTLE_S (see _settle).
        self._settle_window: deque[tuple[float, float]] = deque()
        self._settled_at = 0.0
        #: The last surplus read while the meters agreed and the cars' power then, the cars'
        #: power at the last tick, when it last moved by itself, how far the grid meter is
        #: behind the box and so how long a move mixes the readings (see _unmixed).
        self._steady_w = 0.0
        self._steady_car_w = 0.0
        self._car_w: float | None = None
        self._car_moved_at = -math.inf
        self._meter_lag = MeterLag()
        self._held = HeldReadings()
        #: The meters' noise, measured, and the surplus's level with it averaged out.
        self._denoise = Denoise()
        self._mixed = False
        self._volts: float | None = None
        #: Recent spells of sun that carries three phases, of sun that does not, and of dips
        #: below the minimum (on the fewest phases the box can use).
        self._three_spells = Spells()
        self._short_spells = Spells()
        self._dip_spells = Spells()
        #: How long the surplus stays at one level, for the first switch to three phases.
        self._levels = Levels()

    @property
    def import_weight(self) -> float:
        """What an imported Wh weighs now, in Wh of sun: ``import_weight``, more for a car whose
        sessions usually end full (:class:`FullCars`)."""
        return self.full_cars.weight(self.settings.import_weight)

    def _weight_note(self) -> str:
        """Why an import weighs more than ``import_weight`` (empty where it does not)."""
        base = self.settings.import_weight
        if self._weight <= base:
            return ""
        full, kept = sum(self.full_cars.ends), SESSIONS_KEPT
        return (
            f"; an imported kWh weighs {self._weight:.1f} of sun, not {base:g}: the car was full "
            f"before the sun was gone in {full} of its last {kept} sessions"
        )

    def _restart(self, state: ChargerState, raw_w: float) -> None:
        self._smoothed_w = raw_w
        self._recent.clear()
        self._typical_w = max(0.0, raw_w)
        self._one_short_w = 0.0
        self._charging = state.charging or self.settings.keep_minimum
        self._enough_since = self._dip_since = self._low_since = self._high_since = None
        self._dip_wh = self._dip_cost_wh = self._low_wh = self._low_cost_wh = self._high_wh = 0.0
        self._three_at_minimum = False
        self._current_a = None
        self._idle.reset()
        self._settle_window.clear()
        self._volts = None
        self._steady_w, self._car_w, self._car_moved_at = raw_w, None, -math.inf
        self._denoise.restart()
        self._meter_lag.pending = None  # what it measured stays: it is the meter's

    def _smooth(self, raw_w: float, now: float, dt: float) -> float:
        """A rise counts once it has held for ``smoothing_up_s`` (then in one step); a fall at once.

        The lowest surplus of the last ``smoothing_up_s`` seconds: a step up in the sun
        becomes one step up in the current, a few seconds late, not a staircase of
        writes; one bright second does nothing. With a noisy meter a small rise waits
        until its level is known (RISE_READINGS, RISE_SIGMAS) and counts at the level's
        mean. ``smoothing_down_s`` (a time constant, default 0) can slow the fall for a
        meter that jitters.
        """
        s = self.settings
        recent = self._recent
        recent.append((now, raw_w))
        while recent[0][0] < now - s.smoothing_up_s:
            recent.popleft()
        held_w = min(w for _, w in recent)
        sigma_w = self._denoise.sigma_w()
        if self._smoothed_w < held_w < self._smoothed_w + RISE_SIGMAS * sigma_w:
            # A small rise in the noise: raw_w is its level's mean (Denoise), once that is known.
            known = len(self._denoise.level) >= RISE_READINGS
            held_w = max(raw_w, self._smoothed_w) if known else self._smoothed_w
        if held_w < self._smoothed_w and s.smoothing_down_s > 0:
            self._smoothed_w += (held_w - self._smoothed_w) * (1.0 - math.exp(-dt / s.smoothing_down_s))
        else:
            self._smoothed_w = held_w
        return self._smoothed_w

    # --- phases ------------------------------------------------------------------------------

    def _phase_choice(
        self, state: ChargerState, ctx: StrategyContext, sun_w: float, line_v: float, dt: float
    ) -> tuple[int, int | None, str]:
        """(phases to plan the current with, phases to ask for or None, why)."""
        s = self.settings
        self._three_at_minimum = False
        now = ctx.now_s
        present = phases_in_use(state)
        box = state.active_phases
        if not ctx.phases_switchable or state.capabilities.grid_phases == 1:
            return present, None, ""
        if s.phases is not None:
            if s.phases == box:
                return min(s.phases, present), s.phases, ""  # e.g. a one-phase car on three
            if now < ctx.phase_switch_at_s:
                return present, None, f"; {plural(s.phases)} after the switch interval"
            return s.phases, s.phases, ""
        if present < box:  # a car that uses fewer phases than offered: more would not help it
            return present, box, ""
        max_a = max(ctx.max_current_a, MIN_CURRENT_A)
        three_min_w = MIN_CURRENT_A * 3 * line_v
        one_max_w = max_a * line_v
        pause_s = state.capabilities.phase_switch_pause_s
        fits_three = sun_w >= three_min_w
        # Three phases against one, in sun per second (their import weighted): positive where
        # three take more, also at 6 A just below their minimum (see three_phase_gain_w).
        gain_w = three_phase_gain_w(sun_w, one_max_w, line_v, self._weight)
        want, why = present, ""
        if not self._charging:
            # A paused box switches for free: three phases when the sun carries them now,
            # else one (the phases are asked for when the car starts, see decide()).
            self._low_since = self._high_since = None
            self._low_wh = self._low_cost_wh = self._high_wh = 0.0
            want = 3 if fits_three else 1
            if want != present:
                why = f"; {plural(want)} for the start (a paused box switches without a pause)"
        elif present >= 3:
            self._high_since, self._high_wh = None, 0.0
            if fits_three or gain_w >= 0:
                self._low_since, self._low_wh, self._low_cost_wh = None, 0.0, 0.0
                if not fits_three:
                    self._three_at_minimum = True
                    extra_w = min(sun_w, 3 * one_max_w) - one_max_w
                    why = (
                        f"; holding 3 phases at {MIN_CURRENT_A:g} A: they take {extra_w / 1000:.2f} kW more sun "
                        f"than 1 phase at {max_a:g} A for {(three_min_w - sun_w) / 1000:.2f} kW of import"
                    )
            else:
                self._low_since = now if self._low_since is None else self._low_since
                self._low_wh += (three_min_w - max(sun_w, 0.0)) * dt / 3600.0
                self._low_cost_wh -= gain_w * dt / 3600.0
                # The switch costs the sun of its pause, and one phase for the switch interval
                # (at what one phase left behind lately).
                cost_wh = (
                    pause_s * min(max(sun_w, 0.0), one_max_w)
                    + ctx.phase_switch_interval_s * self._one_short_w
                ) / 3600.0
                held_s = now - self._low_since
                rest_s = self._short_spells.remaining_s(now)
                expected_wh = 0.0 if rest_s is None else -gain_w * rest_s / 3600.0
                if rest_s is not None and expected_wh >= cost_wh:
                    want = 1
                    why = (
                        f"; to 1 phase: three are not carried, and such spells last about {rest_s:.0f} s: "
                        f"holding them would cost {kwh_text(expected_wh)} (import weighted, less the sun they "
                        f"add), the switch costs {kwh_text(cost_wh)} of sun"
                    )
                elif self._low_cost_wh >= cost_wh or held_s >= s.phase_down_delay_s:
                    want = 1
                    why = (
                        f"; to 1 phase: three are not carried, holding them imported {kwh_text(self._low_wh)} "
                        f"(cost {kwh_text(self._low_cost_wh)} weighted, less the sun they added), "
                        f"the switch costs {kwh_text(cost_wh)} of sun"
                    )
        else:
            self._low_since, self._low_wh, self._low_cost_wh = None, 0.0, 0.0
            if gain_w <= 0:
                self._high_since, self._high_wh = None, 0.0
            else:
                self._high_since = now if self._high_since is None else self._high_since
                self._high_wh += gain_w * dt / 3600.0
                # The switch costs the sun of its pause. Not the dips that may come within the
                # switch interval: each is priced when it comes (ridden at 6 A while that costs
                # less than a pause), and what they cost lately would be charged just as the sun
                # comes back, since a bright spell follows a dip (see the module docstring).
                cost_wh = pause_s * min(present * one_max_w, sun_w) / 3600.0
                rest_s = self._three_spells.remaining_s(now)
                lasts = "" if rest_s is None else f"such sun lasts about {rest_s:.0f} s"
                level_s = self._levels.typical_s()
                if rest_s is None and level_s is not None and sun_w - three_min_w > level_band_w(sun_w):
                    # No spell of three-phase sun has ended yet (the day's first): how long the
                    # sun holds a level says how long this one lasts, where a level's typical
                    # change would still leave three phases carried.
                    rest_s = level_s
                    lasts = f"no such sun has ended yet, and the sun holds a level for about {level_s:.0f} s"
                expected_wh = 0.0 if rest_s is None else gain_w * rest_s / 3600.0
                if rest_s is not None and expected_wh >= cost_wh:
                    want = 3
                    why = (
                        f"; to 3 phases: {lasts}, one phase would leave "
                        f"{kwh_text(expected_wh)} behind, the switch costs {kwh_text(cost_wh)}"
                    )
                elif self._high_wh >= cost_wh:
                    want = 3
                    why = (
                        f"; to 3 phases: one phase left {kwh_text(max(self._high_wh, 0.0))} of sun behind, "
                        f"the switch costs {kwh_text(cost_wh)}"
                    )
                elif fits_three and now - self._high_since >= s.phase_up_delay_s:
                    # The longest wait once three phases are carried; just below their minimum
                    # (where three at 6 A would import) only the account above decides.
                    want = 3
                    why = (
                        f"; to 3 phases: the sun carries them, and one phase has left sun behind for "
                        f"{now - self._high_since:.0f} s (phase_up_delay_s {s.phase_up_delay_s:g} s)"
                    )
        if want == present:
            return present, box, why
        if now < ctx.phase_switch_at_s:
            wait = ctx.phase_switch_at_s - now
            return present, None, f"{why} (the switch interval allows it in {wait:.0f} s)"
        if want == 1:
            self._low_since, self._low_wh, self._low_cost_wh = None, 0.0, 0.0
        else:
            self._high_since, self._high_wh = None, 0.0
            self._three_at_minimum = self._charging and not fits_three
        return want, want, why

    # --- the decision ------------------------------------------------------------------------

    def decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        """The decision, with what the grid meter's lag means for it and the numbers behind it."""
        decision = self._decide(snapshot, ctx)
        lag_s = self._meter_lag.measured_s()
        return dataclasses.replace(
            decision,
            reason=decision.reason + lag_note(lag_s),
            figures=(
                ("surplus_watts", round(self._sun_w, 1)),
                ("surplus_noise_watts", round(self._denoise.sigma_w(), 1)),
                ("grid_meter_lag_seconds", round(lag_s, 1)),
                ("import_weight", round(self._weight, 2)),
            ),
        )

    def _decide(self, snapshot: Snapshot, ctx: StrategyContext) -> Decision:
        state = snapshot.chargers[ctx.charger_id].state
        if state is None:
            raise ValueError("no charger reading")
        s = self.settings
        now = ctx.now_s
        share = ctx.surplus_share
        share_why = ""
        if share is None:
            raw_w = available_w(snapshot, state, s)
        else:  # several chargers: the surplus of all of them, then this one's part of it
            raw_w, share_why = share.split(available_w(snapshot, state, s, share.others_power_w))
            share_why = f" ({share_why})"
        if self._last_at is None or not 0 <= now - self._last_at <= RESET_AFTER_S:
            self._restart(state, raw_w)  # first call, a long gap, or time going backwards
            dt = 0.0
        else:
            dt = now - self._last_at
        cars_w = state.power_total_w + (0.0 if share is None else share.others_power_w)
        read_at = self._held.read_at(snapshot.grid_power_w, now - grid_age_s(snapshot))
        raw_w = self._unmixed(raw_w, cars_w, now, read_at)
        raw_w = self._denoise.update(raw_w, own=not self._mixed, read_at=read_at)
        sun_w = self._sun_w = self._smooth(raw_w, now, dt)
        self._last_at = now
        line_v = self._line_volts(volts(state, s.voltage_v), dt)
        self._track_typical(raw_w, ctx, line_v, dt)
        car_idle = self._idle.update(state, now, offering=self._charging)
        self.full_cars.update(state, car_idle, ctx.past_sessions)
        self._weight = self.full_cars.weight(s.import_weight)

        phases, ask_phases, phase_why = self._phase_choice(state, ctx, sun_w, line_v, dt)
        exact_a = sun_w / (line_v * phases)
        enough = exact_a >= MIN_CURRENT_A
        shown_a = max(floor_notch(exact_a, phases), 0.0)  # the same rounding as the setpoint
        why = f"surplus {sun_w / 1000:.2f} kW{share_why} = {current_text(shown_a)} A on {plural(phases)}"

        if not self._charging:
            self._enough_since = (
                (now if self._enough_since is None else self._enough_since) if enough else None
            )
            waiting = self._enough_since is None or now - self._enough_since < s.start_delay_s
            if waiting or now < ctx.resume_at_s:
                if self._enough_since is None:
                    wait = ""
                elif now < ctx.resume_at_s:
                    wait = f", resuming in {ctx.resume_at_s - now:.0f} s (5 min after a pause)"
                else:
                    wait = f", starting in {s.start_delay_s - (now - self._enough_since):.0f} s"
                # The phases are chosen when the car starts: switching a paused box costs no
                # pause, but it starts the switch interval, which would bind the charging car.
                return strategy_decision(ctx, charge=False, phases=None, reason=f"pv: {why}{wait}{phase_why}")
            self._charging, self._enough_since = True, None
            self._dip_since, self._dip_wh, self._dip_cost_wh = None, 0.0, 0.0
        # A car that takes nothing, sharing the surplus: it gets what the others leave (see
        # surplus.sharing) and holds no more of it (nor of the circuits); without 6 A of it, it
        # pauses at once: riding through takes nothing for it and holds the others' room.
        box_a = sun_w / (line_v * state.active_phases)
        if car_idle and share is not None and not s.keep_minimum and box_a < MIN_CURRENT_A:
            self._charging, self._dip_since, self._current_a = False, None, None
            self._dip_wh = self._dip_cost_wh = 0.0
            return strategy_decision(
                ctx,
                charge=False,
                phases=None,
                reason=f"pv: {why}; paused: the car has drawn nothing though offered {MIN_CURRENT_A:g} A or more "
                "(full, or waiting), and the boxes sharing the surplus take what it would hold",
            )
        # A surplus within the meters' noise of 6 A (margin_a) is at the minimum, not a dip: once
        # the noise is averaged out (Denoise) it can sit there for minutes, importing a few watts
        # or none, and the stop delay would pause a car that costs nothing to ride.
        at_minimum = exact_a >= MIN_CURRENT_A - margin_a(phases)
        if at_minimum or s.keep_minimum or self._three_at_minimum:
            self._dip_since, self._dip_wh, self._dip_cost_wh = None, 0.0, 0.0
        else:
            paused = self._ride_or_pause(sun_w, phases, line_v, now, dt)
            if paused is not None:
                return strategy_decision(ctx, charge=False, phases=None, reason=f"pv: {why}; {paused}")
        if car_idle and self._current_a is not None:
            most_a = ctx.max_current_a
            if share is not None:  # no more than its share (see above)
                most_a = min(most_a, max(floor_notch(box_a, state.active_phases), MIN_CURRENT_A))
            held_a = self._current_a = self._sent(min(self._current_a, most_a), now)
            why += (
                f"; the car has drawn nothing though offered {MIN_CURRENT_A:g} A or more (full, or waiting): "
                f"held at {held_a:g} A on {plural(state.active_phases)} until it draws"
            )
            return strategy_decision(
                ctx, charge=True, current_a=held_a, phases=None, reason=f"{self.name}: {why}"
            )
        if car_idle:  # a start: the sun's current, on the phases the box has
            ask_phases, phase_why = None, ""
            phases = state.active_phases
            exact_a = sun_w / (line_v * phases)
            shown_a = max(floor_notch(exact_a, phases), 0.0)
            why = (
                f"surplus {sun_w / 1000:.2f} kW{share_why} = {current_text(shown_a)} A on {plural(phases)}; "
                f"the car has drawn nothing though offered {MIN_CURRENT_A:g} A or more (full, or waiting): "
                f"started on the {plural(phases)} the box has, no switch"
            )
        self._current_a = target = self._settle(exact_a, ctx.max_current_a, now, phases)
        if self._dip_since is not None:
            why += (
                f"; riding through at {MIN_CURRENT_A:g} A (imported {kwh_text(self._dip_wh)}, net cost "
                f"{kwh_text(self._dip_cost_wh)} of the {kwh_text(self._pause_cost_wh())} a pause would cost in sun"
                f"{self._weight_note()})"
            )
        elif exact_a < MIN_CURRENT_A and not self._three_at_minimum:
            why += f"; minimum {MIN_CURRENT_A:g} A"
        elif target != (bound_a := min(max(shown_a, MIN_CURRENT_A), ctx.max_current_a)):
            # Held where it was: below the surplus by the margin, or above it by less than the
            # margin until the mean says the sun has fallen (see _settle). Said as it is.
            where = (
                "a margin below the surplus for the meters' noise"
                if target < bound_a
                else "held above this reading until the surplus's mean falls below it"
            )
            why += f"; at {target:g} A ({where}; changes below {s.step_a:g} A follow its mean)"
        reason = f"{self.name}: {why}{phase_why}"
        return strategy_decision(ctx, charge=True, current_a=target, phases=ask_phases, reason=reason)

    def _unmixed(self, raw_w: float, car_w: float, now: float, read_at: float) -> float:
        """The surplus to go by: the last steady one for a while after the cars' power moved.

        The surplus is the car's power (the box's reading; with several chargers sharing
        the surplus, all of theirs: ``car_w``) less the grid's (the meter's, taken at
        ``read_at``). When that power moves (a new current, a start, the end of the box's
        switching pause, another charger stopping), a meter a second or more behind the
        boxes still shows the old power, so for a few seconds the move itself reads as a
        step in the sun of its size: a fall would be followed by a second fall, a pause or
        a phase switch. Until the car has followed (FOLLOW_S, IEC 61851-1) and the meter
        can show the move (:class:`MeterLag`), the last surplus read before the move stands
        in; the governor holds a new current 5 s anyway.
        """
        moved = self._car_w is not None and abs(car_w - self._car_w) >= CAR_MOVE_A * self.settings.voltage_v
        self._car_w = car_w
        lag = self._meter_lag
        if moved:
            self._car_moved_at = now
            lag.moved(now, self._steady_w, car_w - self._steady_car_w)
        lag.update(raw_w, now, read_at)
        changed = self._charging and self._current_a is not None and lag.mixed(self._settled_at, now, read_at)
        self._mixed = changed or lag.mixed(self._car_moved_at, now, read_at)
        if self._mixed:
            return self._steady_w
        self._steady_w, self._steady_car_w = raw_w, car_w
        return raw_w

    def _line_volts(self, measured_v: float, dt: float) -> float:
        """The line voltage for W <-> A, averaged over VOLTS_S: the box's reading jitters by a
        volt or so, which at 16 A moves the amps by 0.07 A."""
        if self._volts is None or dt == 0.0:
            self._volts = measured_v
        else:
            self._volts += (measured_v - self._volts) * (1.0 - math.exp(-dt / VOLTS_S))
        return self._volts

    def _track_typical(self, raw_w: float, ctx: StrategyContext, line_v: float, dt: float) -> None:
        """Update the averages of the recent sun (see ``__init__``)."""
        lowest = 1 if ctx.phases_switchable else 3
        max_a = max(ctx.max_current_a, MIN_CURRENT_A)
        one = min(raw_w, max_a * line_v) if raw_w >= MIN_CURRENT_A * line_v else 0.0
        three = min(raw_w, 3 * max_a * line_v) if raw_w >= 3 * MIN_CURRENT_A * line_v else 0.0
        takeable = max(one, three) if lowest == 1 else three
        k = 1.0 - math.exp(-dt / TYPICAL_SUN_S)
        self._typical_w += (takeable - self._typical_w) * k
        self._one_short_w += (max(0.0, three - one) - self._one_short_w) * k
        now = ctx.now_s
        self._three_spells.update(three > 0, now)
        self._short_spells.update(three == 0, now)
        self._dip_spells.update(takeable == 0, now)
        self._levels.update(raw_w, now)

    def _pause_cost_wh(self) -> float:
        """What a pause costs: the sun of the next 5 minutes, judged by the last ten."""
        return self._typical_w * PAUSE_HOLD_S / 3600.0

    def _ride_or_pause(self, sun_w: float, phases: int, line_v: float, now: float, dt: float) -> str | None:
        """Count what riding a dip at 6 A costs; the reason to pause once it costs more than a pause.

        Riding costs its import (weighted) but takes the little sun there is, which a
        pause would send to the grid; a pause costs the sun of the next 5 minutes.
        """
        s = self.settings
        self._dip_since = now if self._dip_since is None else self._dip_since
        sun = max(sun_w, 0.0)
        import_w = MIN_CURRENT_A * phases * line_v - sun
        net_w = import_w * self._weight - sun
        self._dip_wh += import_w * dt / 3600.0
        self._dip_cost_wh += net_w * dt / 3600.0
        budget = self._pause_cost_wh()
        spells = self._short_spells if phases >= 3 else self._dip_spells
        rest_s = spells.remaining_s(now)
        expected_wh = 0.0 if rest_s is None else net_w * rest_s / 3600.0
        if rest_s is not None and expected_wh > 0 and expected_wh >= budget:
            why = (
                f"pausing: such dips last about {rest_s:.0f} s, riding through would cost "
                f"{kwh_text(expected_wh)}, more than the {kwh_text(budget)} a pause is worth (5 min of the recent sun)"
                f"{self._weight_note()}"
            )
        elif self._dip_cost_wh > 0 and self._dip_cost_wh >= budget:
            why = (
                f"pausing: riding through imported {kwh_text(self._dip_wh)} (net cost {kwh_text(self._dip_cost_wh)}), "
                f"more than the {kwh_text(budget)} a pause is worth (5 min of the recent sun)"
                f"{self._weight_note()}"
            )
        elif now - self._dip_since >= s.stop_delay_s:
            why = f"pausing: below {MIN_CURRENT_A:g} A for {s.stop_delay_s:g} s"
        else:
            return None
        self._charging, self._dip_since, self._current_a = False, None, None
        self._dip_wh = self._dip_cost_wh = 0.0
        return why

    def _settle(self, exact_a: float, max_a: float, now: float, phases: int) -> float:
        """The current to send: the surplus's amps, held through noise and small changes.

        A change of ``step_a`` or more, or to a bound (6 A, the maximum), goes through at
        once, in notches (0.1 A; 0.05 A on three phases, see ``notch_a``), landing
        ``margin_a`` below the surplus (0.05 A; 0.025 A on three phases). A smaller one
        follows the *mean* of the surplus's amps, so the meters' noise averages out instead
        of keeping the car a notch above the sun; the mean counts once the readings no
        longer mix the old current with the new (FOLLOW_S, longer for a slow meter: see
        :meth:`_unmixed`).
        Down once the mean of the last ``SETTLE_DOWN_S`` is ``SETTLE_MARGIN_A`` below the
        current on any phase count (an import, weighted, is dear, but so is a write for a
        notch of noise), to the level of the last seconds; up once the mean of the last
        ``SETTLE_S`` is ``UP_GAP_A`` above it, to that mean less the margin (sun to the grid
        is cheap).
        """
        target = min(max(floor_notch(exact_a, phases), MIN_CURRENT_A), max_a)
        last = self._current_a
        big = last is None or abs(target - last) >= self.settings.step_a
        if big or (target != last and target in (MIN_CURRENT_A, max_a)):
            if target != last:
                # A step is read while the car still draws the old current: land a margin
                # lower, so the mean that follows does not find the car a notch above the sun
                # (also on a rise: the lowest of three readings is hardly below their noise).
                target = min(max(floor_notch(exact_a - margin_a(phases), phases), MIN_CURRENT_A), max_a)
            return self._sent(target, now)
        assert last is not None
        if self._mixed:  # the car has not followed yet, or the meter cannot show it yet
            return last
        window = self._settle_window
        window.append((now, min(max(exact_a, MIN_CURRENT_A), max_a)))
        while window[0][0] <= now - SETTLE_S:
            window.popleft()
        span_s = now - window[0][0]
        down = statistics.fmean(a for t, a in window if t > now - SETTLE_DOWN_S)
        if span_s >= SETTLE_DOWN_S - 1 and down < last - SETTLE_MARGIN_A:
            # To the level of the last seconds: a fall within the window is not averaged away.
            latest = statistics.fmean(a for t, a in window if t > now - FOLLOW_S)
            return self._sent(max(floor_notch(min(down, latest), phases), MIN_CURRENT_A), now)
        up = statistics.fmean(a for _, a in window)
        if span_s >= SETTLE_S - 1 and up >= last + UP_GAP_A:
            # The noise margin below the mean, so noise does not call for a correction down.
            return self._sent(min(floor_notch(up - margin_a(phases), phases), max_a), now)
        return last

    def _sent(self, current_a: float, now: float) -> float:
        """A new current: the small-change means start again once the car has followed it."""
        if current_a != self._current_a:
            self._settled_at = now
            self._settle_window.clear()
            self._meter_lag.current_set(now)
        return current_a


def make_pv(options: Mapping[str, Any]) -> Strategy:
    """Surplus only: pauses when riding through the dip would cost more than the pause."""
    return PvStrategy(parse_settings(options, keep_minimum=False), "pv")


def make_minpv(options: Mapping[str, Any]) -> Strategy:
    """At least the minimum current, plus the surplus."""
    return PvStrategy(parse_settings(options, keep_minimum=True), "minpv")


@hookimpl
def surplus_register_strategies(register: RegisterStrategy) -> None:
    register(
        "pv",
        make_pv,
        needs_meter=True,
        summary="the PV surplus only: rides short dips at the minimum, pauses when that costs less",
        options=DEFAULTS,
    )
    register(
        "minpv",
        make_minpv,
        needs_meter=True,
        summary="at least the minimum current, plus the PV surplus",
        options=DEFAULTS,
    )
