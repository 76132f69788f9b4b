"""Reference controllers: plain surplus chargers to measure surplus against.

They behave like a typical solar-surplus controller with timer hysteresis
(evcc's defaults are the model for "30 s"): every ``interval_s`` they look at
the surplus and

* start once the surplus has carried the minimum power (6 A on the fewest
  phases the car can use) for ``enable_delay_s``, on the phases that take the
  most of it;
* set the current to the surplus on the phases in use (6 A .. max);
* while the surplus is below the minimum, hold 6 A; after ``disable_delay_s``
  of that, stop;
* switch 1 -> 3 phases once three have been carried for ``enable_delay_s``,
  3 -> 1 once they have not for ``disable_delay_s``.

They are deliberately generous: they see the surplus exactly (no meter lag,
no noise), the car follows every setpoint at once, and there is no minimum
time between a pause and a resume. They run on the same box: a phase switch
while the car draws costs the box's own switching pause (the car draws nothing
for ``Setup.switch_pause_s``), as it does for surplus. Each works
in whole seconds on the day's step function and fills the same per-tick
:class:`~surplus.sim.score.Series` as the real replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .day import Day
from .score import Car, Counts, Series, Setup, count_changes


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A reference controller's timing."""

    name: str
    interval_s: float
    enable_delay_s: float
    disable_delay_s: float


REFERENCE_30S = Reference(name="reference-30s", interval_s=30.0, enable_delay_s=60.0, disable_delay_s=180.0)
REFERENCE_5S = Reference(name="reference-5s", interval_s=5.0, enable_delay_s=30.0, disable_delay_s=60.0)
REFERENCES = (REFERENCE_30S, REFERENCE_5S)


@dataclass(slots=True)
class _State:
    on: bool = False
    phases: int = 1
    current_a: float = 0.0
    enable_since: float | None = None
    disable_since: float | None = None
    up_since: float | None = None
    down_since: float | None = None
    #: The box's switching pause runs until then (the car draws nothing).
    switching_until: float = -math.inf


def _since(flag: bool, since: float | None, now: float) -> float | None:
    """A timer that runs while ``flag`` holds and resets when it does not."""
    if not flag:
        return None
    return now if since is None else since


def _decide(st: _State, surplus_w: float, setup: Setup, ref: Reference, now: float) -> None:
    v, lo = setup.volts, setup.min_a
    fewest, most = min(setup.phase_counts), max(setup.phase_counts)
    if not st.on:
        st.enable_since = _since(surplus_w >= lo * fewest * v, st.enable_since, now)
        if st.enable_since is not None and now - st.enable_since >= ref.enable_delay_s:
            st.on, st.enable_since, st.disable_since = True, None, None
            st.up_since = st.down_since = None
            st.phases = max(setup.phase_counts, key=lambda p: (setup.best_power_w_on(surplus_w, p), -p))
        else:
            st.current_a = 0.0
            return
    if fewest != most:
        three_fit = surplus_w >= lo * most * v
        st.up_since = _since(st.phases == fewest and three_fit, st.up_since, now)
        st.down_since = _since(st.phases == most and not three_fit, st.down_since, now)
        if st.up_since is not None and now - st.up_since >= ref.enable_delay_s:
            st.phases, st.up_since = most, None
            st.switching_until = now + setup.switch_pause_s
        if st.down_since is not None and now - st.down_since >= ref.disable_delay_s:
            st.phases, st.down_since = fewest, None
            st.switching_until = now + setup.switch_pause_s
    amps = surplus_w / (v * st.phases)
    st.disable_since = _since(amps < lo, st.disable_since, now)
    if st.disable_since is not None and now - st.disable_since >= ref.disable_delay_s:
        st.on, st.disable_since, st.current_a = False, None, 0.0
        st.up_since = st.down_since = None
        return
    st.current_a = min(max(amps, lo), setup.max_a)


def run_reference(day: Day, car: Car, setup: Setup, ref: Reference) -> tuple[Series, Counts]:
    """Replay ``day`` with the reference controller ``ref``, second by second."""
    series = Series(tick_s=1.0)
    st = _State()
    start = math.floor(car.arrival_s)
    end = math.ceil(min(car.departure_s, day.end_s))
    need_wh = car.energy_wh
    got_wh = 0.0
    next_decision = float(start)
    i = day.index(start)
    n = len(day.t_s)
    for t in range(start, end):
        now = float(t)
        while i + 1 < n and day.t_s[i + 1] <= now:
            i += 1
        surplus = day.surplus_w(i)
        if now >= next_decision:
            _decide(st, surplus, setup, ref, now)
            next_decision += ref.interval_s
        drawing = st.on and now >= st.switching_until
        power = st.current_a * st.phases * setup.volts if drawing else 0.0
        if got_wh >= need_wh:
            power = 0.0
        elif got_wh + power / 3600.0 > need_wh:
            power = (need_wh - got_wh) * 3600.0  # the battery fills within this second
        got_wh += power / 3600.0
        series.t_s.append(now)
        series.car_w.append(power)
        series.current_a.append(st.current_a if st.on else 0.0)
        series.phases.append(float(st.phases))
        series.grid_w.append(day.load_w[i] + day.battery_w[i] + power - day.pv_w[i])
    return series, count_changes(series)
