"""Strategy "schedule": PV until the departure needs the grid, cheap windows, time zones, DST."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from surplus_plugins.pv import make_pv
from surplus_plugins.schedule import ScheduleStrategy, make_schedule
from surplus_plugins.schedule_settings import parse_schedule

from surplus.clock import FakeClock
from surplus.meter import MeterEnv
from surplus.options import OptionError
from surplus.plugins import collect_meters, make_plugin_manager
from surplus.sim.model import AmtronModel, EvProfile
from surplus.strategy import Strategy, StrategyContext
from surplus.types import ChargerReading, ChargerState, Decision, EvseState, MeterReading, Snapshot
from tests.factories import charger_state
from tests.loop_support import assert_governor_rules_held, build_controller

VOLTS = 230.0
DAY_WORDS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NO_SUN_W = -400.0  # a house at night: the "surplus" is the base load, negative
#: 20 kWh at 16 A on 3 x 230 V take 6521.7 s; with the 30 min margin the plan starts 2 h 18 min 41.7 s early.
LEAD_S = 1800 + 20_000 / (16 * 3 * VOLTS) * 3600


def at(zone: str, when: str) -> float:
    """Unix time of a local ``"YYYY-MM-DD HH:MM[:SS]"`` in ``zone``."""
    return datetime.fromisoformat(when).replace(tzinfo=ZoneInfo(zone)).timestamp()


def car(
    current_a: float = 0.0,
    phases: int = 3,
    *,
    session_wh: float = 0.0,
    connected: bool = True,
    **changes: Any,
) -> ChargerState:
    """A box with a car drawing ``current_a`` on ``phases`` (0 A: plugged in, not drawing)."""
    lines = [current_a if i < phases else 0.0 for i in range(3)]
    if not connected:
        state = EvseState.IDLE
    else:
        state = EvseState.CHARGING if current_a > 0 else EvseState.READY
    fields: dict[str, Any] = {
        "evse_state": state,
        "current_l1_a": lines[0],
        "current_l2_a": lines[1],
        "current_l3_a": lines[2],
        "voltage_l1_v": VOLTS,
        "power_total_w": current_a * phases * VOLTS,
        "switched_phases": 1 if phases == 1 else 0,
        "requested_phases": 1 if phases == 1 else 0,
        "session_energy_wh": session_wh,
    }
    return charger_state("wb1", 0.0, **{**fields, **changes})


def snap(state: ChargerState, grid_w: float | None) -> Snapshot:
    meters = {}
    if grid_w is not None:
        meters["grid"] = MeterReading(meter_id="grid", read_at_s=0.0, grid_power_w=grid_w)
    return Snapshot(
        at_s=0.0,
        chargers=MappingProxyType({"wb1": ChargerReading(charger_id="wb1", state=state, age_s=0.0)}),
        meters=MappingProxyType(meters),
    )


def context(now_s: float, wall_s: float, *, switchable: bool = True, max_a: float = 32.0) -> StrategyContext:
    return StrategyContext(
        charger_id="wb1",
        now_s=now_s,
        wall_s=wall_s,
        min_current_a=6.0,
        max_current_a=max_a,
        phases_switchable=switchable,
    )


def schedule(**options: Any) -> ScheduleStrategy:
    options.setdefault("timezone", "UTC")
    options.setdefault("plan_current_a", 16)
    strategy = make_schedule(options)
    assert isinstance(strategy, ScheduleStrategy)
    return strategy


def decide(
    strategy: Strategy, state: ChargerState, wall_s: float, *, surplus_w: float = NO_SUN_W
) -> Decision:
    """One tick with the grid at ``car power - surplus`` (monotonic time = wall time here)."""
    return strategy.decide(snap(state, state.power_total_w - surplus_w), context(wall_s, wall_s))


# 2025-11-25 is a Tuesday; a 07:00 UTC departure on it.
TUESDAY_7 = at("UTC", "2025-11-25 07:00")


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"departure": "7am"}, "departure: '7am' is not a time like \"07:00\""),
        ({"departure": "24:00"}, "departure: '24:00' is not a time of day"),
        ({"departure": 700}, 'departure: 700 is not a time; write it as "07:00"'),
        ({"departure": 7}, 'departure: 7 is not a time; write it as "07:00"'),
        ({"departure": 2230}, 'departure: 2230 is not a time; write it as "22:30"'),
        ({"departure": 2400}, 'departure: 2400 is not a time; write a time like "07:00"'),
        ({"departure": 7.5}, 'departure: 7.5 is not a time; write a time like "07:00"'),
        ({"departure": None}, 'departure: expected a time like "07:00", got None'),
        ({"windows": [{"start": 2200, "end": "6:00", "current_a": 10}]}, "windows\\[0\\].start: 2200 is not"),
        ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone 'Mars/Olympus'"),
        ({"timezone": "../etc/passwd"}, "timezone: unknown time zone"),
        ({"days": ["mon", "tues"]}, "days: unknown day 'tues' \\(did you mean 'tue'\\?\\)"),
        ({"days": []}, "days: an empty list has no departure"),
        ({"days": "mon"}, "days: expected a list"),
        ({"energy_kwh": -5}, "energy_kwh: -5 kWh is below the minimum 0.1 kWh"),
        ({"energy_kwh": 0}, "energy_kwh: 0 kWh is below the minimum"),
        ({"plan_current_a": 40}, "plan_current_a: 40 A is above the maximum 32 A"),
        ({"margin_min": -1}, "margin_min: -1 min is below the minimum 0 min"),
        ({"windows": [{"start": "22:00", "end": "22:00", "current_a": 10}]}, "windows\\[0\\]: start and end"),
        ({"windows": [{"start": "22:00", "end": "6:00", "current_a": 40}]}, "windows\\[0\\].current_a: 40 A"),
        ({"windows": [{"start": "22:00", "current_a": 10}]}, "windows\\[0\\].end: missing"),
        ({"windows": [{"start": "22:00", "end": "x", "current_a": 10}]}, "windows\\[0\\].end: 'x' is not"),
        ({"windows": [{"start": "1:00", "end": "2:00", "amps": 6}]}, "windows\\[0\\].amps: unknown option"),
        ({"windows": ["22:00-06:00"]}, "windows\\[0\\]: expected a mapping"),
        ({"pv": {"start_delay_s": "soon"}}, "pv.start_delay_s: expected a number"),
        ({"pv": {"phase": 1}}, "pv.phase: unknown option \\(did you mean 'phases'\\?\\)"),
        ({"pv": "fast"}, "pv: expected a mapping"),
        ({"departure_time": "07:00"}, "departure_time: unknown option \\(did you mean 'departure'\\?\\)"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], match: str) -> None:
    with pytest.raises(OptionError, match=match):
        make_schedule(options)


def test_good_options_and_defaults() -> None:
    s = parse_schedule({})
    assert (s.departure_min, s.energy_wh, s.margin_s, s.plan_current_a) == (420, 20_000, 1800, None)
    assert s.days == frozenset(range(7)) and s.zone is None and s.windows == ()
    s = parse_schedule(
        {
            "departure": "22:30",
            "days": ["Mon", "friday"],
            "timezone": "Europe/Berlin",
            "windows": [{"start": "22:00", "end": "06:00", "current_a": 10}],
            "pv": {"reserve_w": 0},
        }
    )
    assert s.departure_min == 22 * 60 + 30 and s.days == {0, 4} and str(s.zone) == "Europe/Berlin"
    assert s.windows[0].contains(23 * 60) and s.windows[0].contains(5 * 60 + 59)
    assert not s.windows[0].contains(6 * 60) and not s.windows[0].contains(12 * 60)
    assert s.pv.reserve_w == 0


# --- the plan ----------------------------------------------------------------------------------


def test_before_the_plan_it_does_exactly_what_pv_does() -> None:
    strategy, alone = schedule(), make_pv({})
    surpluses = [5000.0] * 90 + [800.0] * 200 + [9000.0] * 400 + [-300.0] * 300
    wall = at("UTC", "2025-11-24 12:00")  # Monday noon: the plan for Tuesday 07:00 starts at 04:41
    current = 0.0
    for i, surplus_w in enumerate(surpluses):
        state = car(current)
        mine, theirs = (
            decide(strategy, state, wall + i, surplus_w=surplus_w),
            decide(alone, state, wall + i, surplus_w=surplus_w),
        )
        assert (mine.charge, mine.current_a, mine.phases) == (theirs.charge, theirs.current_a, theirs.phases)
        assert (
            mine.reason
            == f"schedule: 20.0 kWh still needed by 07:00 (Tue), plan starts Tue 04:41; until then {theirs.reason}"
        )
        current = (mine.current_a or current) if mine.charge else 0.0
    assert not mine.charge and current == 0.0  # the evening without sun ends paused


def test_at_the_latest_start_it_charges_at_the_plan_current_without_sun() -> None:
    strategy = schedule()
    start = TUESDAY_7 - LEAD_S
    d = decide(strategy, car(), start - 2)
    assert not d.charge and "plan starts 04:41; until then pv: surplus" in d.reason
    d = decide(strategy, car(), start + 0.5)
    assert d.charge and d.current_a == 16 and d.phases == 3
    assert d.reason == "schedule: plan running, 16 A on 3 phases until 20.0 kWh more or 07:00 (Tue)"


def test_shortly_before_the_plan_the_box_goes_to_the_plans_phases() -> None:
    """QA: the paused sun part chose 1 phase just before a 3-phase plan, which then waited 10 min."""
    start = TUESDAY_7 - LEAD_S
    early = schedule()
    d = decide(early, car(phases=3), start - 20 * 60)
    # While the plan is far off the paused sun part leaves the phases alone (it picks them
    # when it starts: a switch on a paused box starts the switch interval).
    assert not d.charge and d.phases is None
    soon = schedule()
    d = decide(soon, car(phases=3), start - 10 * 60)
    assert not d.charge and d.phases == 3  # within PREPARE_S of the start: the plan's phases
    d = decide(soon, car(phases=3), start + 0.5)
    assert d.charge and d.phases == 3


def test_the_plan_runs_on_until_the_target_and_then_the_sun_alone_charges() -> None:
    strategy = schedule()
    start = TUESDAY_7 - LEAD_S
    assert decide(strategy, car(), start + 1).charge
    # (ticks less than 30 s apart, so the inner pv keeps its state as in the loop)
    # The car got more than the estimate: the latest start moves later, but no stop-start.
    d = decide(strategy, car(20, session_wh=10_000), start + 20)
    assert d.charge and d.current_a == 16 and "until 10.0 kWh more" in d.reason
    d = decide(strategy, car(16, session_wh=19_990), start + 40)
    assert d.charge and d.current_a == 16
    d = decide(strategy, car(16, session_wh=20_000), start + 41)
    assert not d.charge and d.reason.startswith(
        "schedule: target 20 kWh reached (20.0 kWh this session); pv:"
    )
    # A new session (the box's counter starts at zero again) makes a new plan, late now.
    d = decide(strategy, car(0, session_wh=0.0), start + 3700)
    assert d.charge and "late: at this rate done at 07:" in d.reason


def test_no_car_means_no_plan() -> None:
    strategy = schedule()
    d = decide(strategy, car(connected=False), TUESDAY_7 - 600)
    assert not d.charge and d.reason.startswith("schedule: no car connected; pv: surplus")


def test_a_departure_after_the_time_has_passed_is_tomorrows() -> None:
    strategy = schedule()
    assert decide(strategy, car(), TUESDAY_7 - 20).charge
    d = decide(strategy, car(16, session_wh=5000), TUESDAY_7 + 1)  # the car did not leave
    assert not d.charge and "15.0 kWh still needed by 07:00 (Wed)" in d.reason


def test_departures_only_on_the_configured_days() -> None:
    strategy = schedule(days=["mon", "tue", "wed", "thu", "fri"])
    saturday_6 = at("UTC", "2025-11-29 06:00")  # an everyday plan would be running now
    d = decide(strategy, car(), saturday_6)
    assert not d.charge and "20.0 kWh still needed by 07:00 (Mon), plan starts Mon 04:41" in d.reason
    assert not decide(strategy, car(), at("UTC", "2025-12-01 04:40")).charge
    assert decide(strategy, car(), at("UTC", "2025-12-01 04:42")).charge


def test_a_one_phase_car_gets_an_earlier_start() -> None:
    strategy = schedule()
    one_phase_car = car(10, 3, current_l2_a=0.0, current_l3_a=0.0, power_total_w=10 * VOLTS)
    d = decide(strategy, one_phase_car, at("UTC", "2025-11-24 22:00"), surplus_w=10 * VOLTS)
    # 20 kWh at 16 A on one phase: 5 h 26 min, plus the margin: from 01:03
    assert "plan starts Tue 01:03" in d.reason
    # A box that cannot switch phases: the plan leaves the phases alone.
    fixed_box = schedule()
    d = fixed_box.decide(snap(car(), 400.0), context(0, TUESDAY_7 - 600, switchable=False))
    assert d.charge and d.phases is None and d.current_a == 16


def test_plan_current_defaults_to_the_device_maximum() -> None:
    strategy = make_schedule({"timezone": "UTC"})
    d = strategy.decide(snap(car(), 400.0), context(0, TUESDAY_7 - 600, max_a=20))
    assert d.charge and d.current_a == 20


def test_without_any_meter_it_is_a_timer() -> None:
    strategy = schedule()
    d = strategy.decide(snap(car(), None), context(0, TUESDAY_7 - 4 * 3600))
    assert not d.charge and "pv: no grid meter" in d.reason
    assert strategy.decide(snap(car(), None), context(1, TUESDAY_7 - 600)).charge


def test_with_a_stale_meter_the_plan_goes_on_and_the_sun_part_is_off() -> None:
    strategy = schedule()
    stale = dataclasses.replace(
        snap(car(), 0.0),
        meters=MappingProxyType(
            {
                "grid": MeterReading(
                    meter_id="grid", read_at_s=0.0, grid_power_w=None, error="stale (12 s old)"
                )
            }
        ),
    )
    assert stale.grid_power_w is None
    d = strategy.decide(stale, context(0, TUESDAY_7 - 4 * 3600))
    assert not d.charge and "pv: no fresh grid-meter reading, the sun part is off" in d.reason
    d = strategy.decide(stale, context(1, TUESDAY_7 - 600))  # the plan needs no meter
    assert d.charge and d.current_a == 16


# --- cheap windows -----------------------------------------------------------------------------


def test_an_overnight_window_charges_at_its_current_and_only_inside() -> None:
    window = {"start": "22:00", "end": "06:00", "current_a": 10}
    strategy = schedule(windows=[window], energy_kwh=5)
    d = decide(strategy, car(), at("UTC", "2025-11-24 23:00"))
    assert d.charge and d.current_a == 10 and d.phases == 3
    assert d.reason.startswith("schedule: cheap window 22:00-06:00, at least 10 A; 5.0 kWh still needed")
    assert decide(strategy, car(10, session_wh=5000), at("UTC", "2025-11-25 05:59")).charge  # target met
    assert not decide(strategy, car(session_wh=5000), at("UTC", "2025-11-25 06:00")).charge
    d = decide(strategy, car(session_wh=5000), at("UTC", "2025-11-25 07:00"))
    assert not d.charge and "target 5 kWh reached" in d.reason
    # With no car the window still releases the box, so a car that plugs in starts at once.
    fresh = schedule(windows=[window], energy_kwh=5)
    assert decide(fresh, car(connected=False), at("UTC", "2025-11-25 01:00")).charge


def test_in_a_window_the_sun_wins_when_it_gives_more() -> None:
    strategy = schedule(
        windows=[{"start": "11:00", "end": "13:00", "current_a": 8}],
        pv={"start_delay_s": 0, "smoothing_down_s": 0},
    )
    d = decide(strategy, car(), at("UTC", "2025-11-24 12:00"), surplus_w=9040)
    assert (
        d.charge and d.current_a == pytest.approx(13.05) and d.phases == 3
    )  # 9040 / 690 = 13.10, less the 0.025 A margin, in 0.05 A steps on 3 phases
    assert "the sun gives more: pv: surplus" in d.reason
    # The car follows; for 5 s after its power moved the sun part goes on with the surplus read
    # before (a grid meter behind the box would still show the old power), then it sees the fall.
    d = decide(strategy, car(12.9), at("UTC", "2025-11-24 12:00:05"), surplus_w=3000)
    assert d.charge and d.current_a == pytest.approx(13.05)
    d = decide(strategy, car(12.9), at("UTC", "2025-11-24 12:00:10"), surplus_w=3000)
    assert d.charge and d.current_a == 8  # the window's 8 A x 3 beat what the sun gives now


# --- time zones and DST ------------------------------------------------------------------------


def test_the_same_instant_is_a_different_local_time_in_each_zone() -> None:
    instant = at("UTC", "2025-11-25 21:30")  # 06:30 on Wednesday in Tokyo
    in_utc = decide(schedule(timezone="UTC"), car(), instant)
    in_tokyo = decide(schedule(timezone="Asia/Tokyo"), car(), instant)
    assert not in_utc.charge and "by 07:00 (Wed), plan starts Wed 04:41" in in_utc.reason
    assert in_tokyo.charge and "or 07:00 (Wed); late: at this rate done at 08:18" in in_tokyo.reason


def test_spring_forward_does_not_shift_the_plan_by_an_hour() -> None:
    # Europe/Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST. 07:00 CEST is 05:00 UTC.
    strategy = schedule(timezone="Europe/Berlin", energy_kwh=50)
    lead_s = 1800 + 50_000 / (16 * 3 * VOLTS) * 3600  # 5 h 1 min 44 s: across the gap
    start = at("UTC", "2025-03-30 05:00") - lead_s
    assert start == pytest.approx(at("Europe/Berlin", "2025-03-30 00:58:15.7"), abs=0.1)  # not 01:58
    d = decide(strategy, car(), start - 2)
    assert not d.charge and "by 07:00 (Sun), plan starts 00:58" in d.reason
    assert decide(strategy, car(), start + 1).charge


def test_fall_back_does_not_shift_the_plan_by_an_hour() -> None:
    # Europe/Berlin, 2025-10-26: 03:00 CEST goes back to 02:00 CET. 07:00 CET is 06:00 UTC.
    strategy = schedule(timezone="Europe/Berlin", energy_kwh=50)
    lead_s = 1800 + 50_000 / (16 * 3 * VOLTS) * 3600
    start = at("UTC", "2025-10-26 06:00") - lead_s  # 00:58 UTC = 02:58 CEST, before the change
    d = decide(strategy, car(), start - 2)
    assert not d.charge and "plan starts 02:58" in d.reason
    assert decide(strategy, car(), start + 1).charge


def test_a_departure_inside_the_spring_gap_is_just_after_it() -> None:
    s = parse_schedule({"timezone": "Europe/Berlin", "departure": "02:30"})
    departure = s.next_departure(at("Europe/Berlin", "2025-03-30 01:00"))
    assert departure is not None
    assert departure[0] == at("UTC", "2025-03-30 01:30")  # 03:30 CEST
    strategy = schedule(timezone="Europe/Berlin", departure="02:30")
    assert "by 02:30 (Sun)" in decide(strategy, car(), at("UTC", "2025-03-29 20:00")).reason


@settings(max_examples=150, deadline=None)
@example(wall_s=at("Europe/Berlin", "2025-03-29 12:00"), zone="Europe/Berlin", days={6})  # into the gap
@example(wall_s=at("America/New_York", "2025-03-08 12:00"), zone="America/New_York", days={6})
@example(wall_s=at("Europe/Berlin", "2025-10-25 12:00"), zone="Europe/Berlin", days={6})  # 02:30 twice
@given(
    wall_s=st.floats(min_value=1_577_836_800, max_value=2_051_222_400),  # 2020 to 2035
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Tokyo"]),
    days=st.sets(st.integers(0, 6), min_size=1),
)
def test_the_next_departure_is_the_first_configured_one_in_any_zone(
    wall_s: float, zone: str, days: set[int]
) -> None:
    # 02:30 falls into the spring gap in Berlin and New York (not in Lord Howe, which moves by 30 min).
    s = parse_schedule({"timezone": zone, "departure": "02:30", "days": [DAY_WORDS[d] for d in days]})
    found = s.next_departure(wall_s)
    assert found is not None
    at_s, local = found
    assert wall_s < at_s <= wall_s + 7 * 86400 + 3600
    assert local.weekday() in days and (local.hour, local.minute) == (2, 30)
    real = datetime.fromtimestamp(at_s, ZoneInfo(zone))
    assert real.date() == local.date()
    if (real.hour, real.minute) != (2, 30):  # only in a gap: then just after it
        assert (real.hour, real.minute) == (3, 30) and s.local(s.unix(local)) != local
    # no configured departure was skipped: the one a day earlier is already past (or not a departure day)
    earlier = local - timedelta(days=1)
    assert earlier.weekday() not in days or s.unix(earlier) <= wall_s


def test_the_machines_zone_is_the_default() -> None:
    s = parse_schedule({})
    wall = 1_764_000_000.0
    assert s.unix(s.local(wall)) == pytest.approx(wall)  # whatever the machine's zone is
    departure = s.next_departure(wall)
    assert departure is not None and 0 < departure[0] - wall <= 86400 + 3600


# --- a simulated night -------------------------------------------------------------------------


@dataclass
class Garage:
    """A tiny closed loop: the car draws what the strategy last allowed (up to its own maximum),
    the box counts the session energy, and the grid carries the house and the car."""

    strategy: Strategy
    wall_s: float
    house_surplus_w: float = NO_SUN_W
    car_max_a: float = 16.0
    phases: int = 3
    current_a: float = 0.0
    session_wh: float = 0.0
    now_s: float = 0.0
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    def run(self, seconds: float, step_s: float = 15.0) -> None:
        for _ in range(round(seconds / step_s)):
            state = car(min(self.current_a, self.car_max_a), self.phases, session_wh=self.session_wh)
            grid = state.power_total_w - self.house_surplus_w
            d = self.strategy.decide(snap(state, grid), context(self.now_s, self.wall_s))
            self.decisions.append((self.wall_s, d))
            if d.phases is not None:
                self.phases = d.phases
            self.current_a = (d.current_a or self.current_a) if d.charge else 0.0
            self.session_wh += min(self.current_a, self.car_max_a) * self.phases * VOLTS * step_s / 3600
            self.now_s += step_s
            self.wall_s += step_s


def test_a_simulated_night_fills_the_car_before_departure_without_stop_start() -> None:
    garage = Garage(schedule(energy_kwh=30), wall_s=at("UTC", "2025-11-24 18:00"))
    garage.run(13 * 3600)  # to 07:00
    assert garage.session_wh >= 30_000
    charging = [(t, d) for t, d in garage.decisions if d.charge]
    first, last = charging[0][0], charging[-1][0]
    lead_s = 1800 + 30_000 / (16 * 3 * VOLTS) * 3600
    assert first == pytest.approx(TUESDAY_7 - lead_s, abs=15)  # not earlier: the night tariff is not cheap
    assert last < TUESDAY_7 - 1700  # done with the margin to spare
    flips = sum(1 for (_, a), (_, b) in itertools.pairwise(garage.decisions) if a.charge != b.charge)
    assert flips == 2  # one start, one stop


def test_a_slow_car_is_late_but_the_plan_does_not_give_up() -> None:
    garage = Garage(schedule(energy_kwh=30), wall_s=at("UTC", "2025-11-24 18:00"), car_max_a=10)
    garage.run(13 * 3600)
    last_reason = garage.decisions[-1][1].reason
    assert garage.decisions[-1][1].charge and "late: at this rate done at 08:07" in last_reason
    assert 18_000 < garage.session_wh < 30_000


# --- through the real loop ---------------------------------------------------------------------


async def test_schedule_mode_fills_the_car_overnight_through_the_real_loop() -> None:
    """03:30-05:00 UTC through the driver, the governor and the AMTRON simulator; the sun is down."""
    run_s = 90 * 60
    clock = FakeClock(start=1000.0, wall_start=at("UTC", "2025-11-25 03:30"))
    model = AmtronModel(clock, ev=EvProfile(soc=0.1, capacity_wh=60_000))
    meters = collect_meters(make_plugin_manager(load_entrypoints=False))
    env = MeterEnv(clock=clock, charger_power_w=lambda: model.charging_power_w)
    meter = meters["simulated"]("grid", {"seed": 1, "start_hour": 3.5}, env)
    options = {"departure": "05:00", "energy_kwh": 6, "timezone": "UTC"}
    controller, bus = build_controller(
        clock, model, strategy=make_schedule(options), mode="schedule", meters=[meter]
    )
    # 6 kWh at 16 A (the simulated box's maximum) on 3 x 230 V: 32.6 min; with the margin from 03:57:23.
    plan_start_s = run_s - 1800 - 6_000 / (16 * 3 * VOLTS) * 3600
    task = asyncio.ensure_future(controller.run(duration_s=run_s))
    await clock.advance(plan_start_s - 30)
    assert model.session_energy_wh < 10  # nothing from the grid before the plan
    await clock.advance(run_s + 1 - (plan_start_s - 30))
    await task
    await bus.close()
    assert model.session_energy_wh >= 6_000
    assert_governor_rules_held(model.record)
    assert model.error_code == 0
