"""`surplus simulate`: day files, the car, the oracle, the scores, the references and the real replay."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from surplus.clock import FakeClock
from surplus.config import load_config
from surplus.sim.day import Day, DayError, load_day, parse_day
from surplus.sim.meter_model import MeterModel
from surplus.sim.model import AmtronModel
from surplus.sim.reference import REFERENCE_5S, REFERENCE_30S, run_reference
from surplus.sim.replay import DayMeter, plan_replay
from surplus.sim.score import Car, CarError, Series, Setup, energies, oracle_wh, parse_car
from surplus.sim.simulate_cli import find_day, format_table, shipped_days, simulate

V = 230.0
BOTH = Setup(phase_counts=(1, 3), max_a=16.0, volts=V)
ONE = Setup(phase_counts=(1,), max_a=16.0, volts=V)
THREE = Setup(phase_counts=(3,), max_a=16.0, volts=V)


def lines_of(points: list[tuple[float, float, float]]) -> list[str]:
    """A day file from breakpoints (t_s, pv_w, load_w): rows every 15 min (the longest step) in between."""
    lines = ["t_s,pv_w,load_w"]
    for k, (t, pv, load) in enumerate(points):
        end = points[k + 1][0] if k + 1 < len(points) else 86400
        while t < end:
            lines.append(f"{t:g},{pv:g},{load:g}")
            t += 900
    return lines


def day_of(points: list[tuple[float, float, float]]) -> Day:
    return parse_day(lines_of(points), name="day.csv")


def constant(pv_w: float, load_w: float = 0.0) -> Day:
    return day_of([(0, pv_w, load_w)])


# --- day files -------------------------------------------------------------------------------


def test_a_day_is_a_step_function_that_holds_until_the_next_row() -> None:
    day = parse_day(["t_s,pv_w,load_w", "0,0,300", "600,5000,500", "660,4000,500"], name="d")
    assert day.end_s == 86400
    assert day.index(599.0) == 0 and day.index(600.0) == 1 and day.index(659.9) == 1
    assert day.index(80000.0) == 2
    assert day.surplus_w(1) == 4500.0
    assert list(day.segments(590, 670)) == [(590, 600, 0), (600, 660, 1), (660, 670, 2)]


def test_iso_times_count_from_the_first_rows_midnight_and_the_battery_column_is_optional() -> None:
    day = parse_day(
        ["time,pv_w,load_w,battery_w", "2022-03-18T12:00:00,0,300,0", "2022-03-18T12:01:30,5000,500,1000"],
        name="d",
    )
    assert list(day.t_s) == [43200.0, 43290.0]
    assert day.has_battery
    assert day.surplus_w(1) == 3500.0  # what the battery takes is not there for the car


def test_semicolons_separate_fields_when_the_header_has_no_comma() -> None:
    day = parse_day(["t_s;pv_w;load_w", "0;0;300", "60;2500.5;400"], name="d")
    assert list(day.pv_w) == [0.0, 2500.5] and day.surplus_w(1) == 2100.5


def test_a_discharging_battery_is_not_sun() -> None:
    day = parse_day(["t_s,pv_w,load_w,battery_w", "0,2000,500,-800"], name="d")
    assert day.surplus_w(0) == 1500.0


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([], "d: empty file"),
        (["pv_w,load_w", "1,2"], "d:1: header: needs exactly one time column"),
        (["t_s,pv_w", "0,1"], "d:1: header: missing column 'load_w'"),
        (["t_s,pv_w,load_w"], "d:1: no data rows after the header"),
        (["t_s,pv_w,load_w", "0,1,2", "60,x,2"], "d:3: pv_w: 'x' is not a number"),
        (["t_s,pv_w,load_w", "0,1,2", "60,nan,2"], "d:3: pv_w: 'nan' is not a finite number"),
        (["t_s,pv_w,load_w", "0,1,2", "60,1"], "d:3: 2 fields, the header has 3"),
        (["t_s,pv_w,load_w", "0,1,2", "60,-5,2"], "d:3: pv_w: -5 W is negative"),
        (["t_s,pv_w,load_w", "0,1,2", "60,5,-2"], "d:3: load_w: -2 W is negative"),
        (
            ["t_s,pv_w,load_w", "0,1,2", "60,1,2", "30,1,2"],
            "d:4: t_s: 30 s is not after the previous row's 60 s",
        ),
        (["t_s,pv_w,load_w", "0,1,2", "0,1,2"], "d:3: t_s: 0 s is not after"),
        (["t_s,pv_w,load_w", "0,1,2", "", "3600,1,2"], "d:4: t_s: a gap of 60.0 min after line 2"),
        (["time,pv_w,load_w", "12:00,1,2"], "d:2: time: '12:00' is not an ISO 8601 time"),
    ],
)
def test_bad_day_files_name_the_line(lines: list[str], error: str) -> None:
    with pytest.raises(DayError) as err:
        parse_day(lines, name="d")
    assert str(err.value).startswith(error), str(err.value)


# --- the car -------------------------------------------------------------------------------


def test_car_specs() -> None:
    assert parse_car("") == Car()
    car = parse_car("arrival=07:30, departure=19:00,capacity_kwh=60,soc=0.25,max_a=32,phases=3")
    assert (car.arrival_s, car.departure_s, car.energy_wh, car.max_a, car.phases) == (
        27000.0,
        68400.0,
        45000.0,
        32.0,
        "3",
    )


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("arrival=8", "--car arrival: '8' is not a time of day"),
        ("arrival=18:00,departure=08:00", "--car departure: must be after arrival"),
        ("speed=3", "--car: unknown key 'speed'"),
        ("energy_kwh=-1", "--car energy_kwh: -1 must be above 0"),
        ("energy_kwh=10,soc=0.5", "--car: give energy_kwh, or capacity_kwh and soc"),
        ("soc=0.5", "--car: capacity_kwh and soc go together"),
        ("capacity_kwh=60,soc=1.2", "--car soc: 1.2 must be 0 or more and below 1"),
        ("max_a=5", "--car max_a: 5 A is below the 6 A"),
        ("phases=2", "--car phases: '2' must be 1, 3 or 1p3p"),
        ("arrival", "--car: 'arrival' is not key=value"),
    ],
)
def test_bad_car_specs_name_the_key(spec: str, error: str) -> None:
    with pytest.raises(CarError) as err:
        parse_car(spec)
    assert str(err.value).startswith(error), str(err.value)


# --- the oracle: hand-computed days -----------------------------------------------------------


def test_oracle_of_a_constant_surplus_is_the_surplus_times_the_hours() -> None:
    car = Car(arrival_s=8 * 3600, departure_s=10 * 3600, energy_wh=100_000)
    assert oracle_wh(constant(3000, 500), car, BOTH) == pytest.approx(2 * 2500)
    # capped by 16 A on one phase (3680 W) when three phases are not allowed
    assert oracle_wh(constant(6000), car, ONE) == pytest.approx(2 * 16 * V)


def test_a_surplus_below_6_a_on_three_phases_counts_only_where_one_phase_is_allowed() -> None:
    car = Car(arrival_s=0, departure_s=3600, energy_wh=100_000)
    day = constant(4000)  # 5.8 A on three phases, 17.4 A on one
    assert oracle_wh(day, car, THREE) == 0.0
    assert oracle_wh(day, car, BOTH) == pytest.approx(16 * V)  # one phase at its 16 A maximum
    assert oracle_wh(day, car, ONE) == pytest.approx(16 * V)
    assert oracle_wh(constant(1379), car, ONE) == 0.0  # just below 6 A on one phase
    assert oracle_wh(constant(1380), car, ONE) == pytest.approx(1380)


def test_a_car_that_fills_up_at_noon_takes_nothing_after() -> None:
    day = day_of([(0, 0, 0), (8 * 3600, 5000, 0), (16 * 3600, 0, 0)])
    car = Car(arrival_s=8 * 3600, departure_s=18 * 3600, energy_wh=20_000)
    assert oracle_wh(day, car, BOTH) == pytest.approx(20_000)  # full at 12:00
    assert oracle_wh(day, Car(arrival_s=8 * 3600, departure_s=12 * 3600, energy_wh=20_000), BOTH) == 20_000
    assert oracle_wh(day, Car(arrival_s=8 * 3600, departure_s=11 * 3600, energy_wh=20_000), BOTH) == 15_000


def test_a_car_that_arrives_after_sunset_can_take_nothing() -> None:
    day = day_of([(0, 0, 0), (8 * 3600, 5000, 300), (19 * 3600, 0, 300)])
    assert oracle_wh(day, Car(arrival_s=19 * 3600, departure_s=23 * 3600), BOTH) == 0.0


# --- scores -------------------------------------------------------------------------------------


def test_energies_split_the_car_into_sun_and_grid() -> None:
    day = day_of([(0, 2000, 0), (2, 1000, 0)])
    series = Series(tick_s=1.0)
    for t, car in [(0, 1500), (1, 2500), (2, 1500), (3, 0)]:
        series.t_s.append(t)
        series.car_w.append(car)
    e = energies(day, series)
    assert e.car_wh == pytest.approx(5500 / 3600)
    assert e.solar_wh == pytest.approx((1500 + 2000 + 1000) / 3600)
    assert e.grid_wh == pytest.approx((500 + 500) / 3600)


# --- the reference controllers -----------------------------------------------------------------


def test_the_30s_reference_starts_after_its_delay_and_follows_the_sun() -> None:
    day = day_of([(0, 0, 0), (3600, 3000, 0), (7200, 8000, 0), (10800, 2000, 0), (14400, 1000, 0)])
    car = Car(arrival_s=0, departure_s=5 * 3600, energy_wh=100_000)
    series, counts = run_reference(day, car, BOTH, REFERENCE_30S)
    at = {int(t): (c, a, p) for t, c, a, p, _ in series.rows()}
    assert at[3659][0] == 0 and at[3660][0] == pytest.approx(3000)  # on after 60 s, on one phase
    assert at[3660][2] == 1
    assert at[7200 + 59][2] == 1 and at[7200 + 60][2] == 3  # three phases after 60 s above 4.14 kW
    assert at[7200 + 60][0] == pytest.approx(8000)
    # 2 kW: three phases held 180 s (6 A = 4.14 kW), then one phase
    assert at[10800 + 100][0] == pytest.approx(6 * 3 * V) and at[10800 + 180][2] == 1
    assert at[10800 + 200][0] == pytest.approx(2000)
    # 1 kW: 6 A held for 180 s, then off
    assert at[14400 + 179][0] == pytest.approx(6 * V) and at[14400 + 180][0] == 0
    assert counts.pauses == 1 and counts.phase_switches == 2


def test_the_5s_reference_reacts_faster() -> None:
    day = day_of([(0, 0, 0), (600, 2000, 0)])
    car = Car(arrival_s=0, departure_s=1200, energy_wh=100_000)
    fast, _ = run_reference(day, car, ONE, REFERENCE_5S)
    slow, _ = run_reference(day, car, ONE, REFERENCE_30S)
    assert fast.car_w[630] == pytest.approx(2000) and fast.car_w[629] == 0
    assert slow.car_w[659] == 0 and slow.car_w[660] == pytest.approx(2000)


def test_a_reference_stops_when_the_car_is_full() -> None:
    car = Car(arrival_s=0, departure_s=7200, energy_wh=1000)
    series, _ = run_reference(constant(3000), car, ONE, REFERENCE_5S)
    assert sum(series.car_w) / 3600 == pytest.approx(1000)


# --- the real replay ----------------------------------------------------------------------------


def _independent_scores(day_path: Path, out_csv: Path) -> tuple[float, float, float]:
    """solar, grid and car Wh from the day file and --out-csv alone (no surplus code)."""
    rows = list(csv.DictReader(day_path.open()))
    steps = [(float(r["t_s"]), float(r["pv_w"]) - float(r["load_w"])) for r in rows]
    solar = grid = car = 0.0
    i = 0
    ticks = list(csv.DictReader(out_csv.open()))
    for k, tick in enumerate(ticks):
        t = float(tick["t_s"])
        dt = float(ticks[k + 1]["t_s"]) - t if k + 1 < len(ticks) else 1.0
        while i + 1 < len(steps) and steps[i + 1][0] <= t:
            i += 1
        surplus = max(0.0, steps[i][1])
        power = float(tick["car_w"])
        solar += min(power, surplus) * dt / 3600
        grid += max(0.0, power - surplus) * dt / 3600
        car += power * dt / 3600
    return solar, grid, car


@pytest.mark.parametrize("path", shipped_days(), ids=lambda p: p.stem)
def test_simulate_on_every_shipped_day_matches_an_independent_score_of_its_own_output(
    path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "surplus.cli", "simulate", path.stem, "--json", "--out-csv", str(out),
         "--car", "arrival=11:00,departure=13:00,energy_kwh=100"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["day"] == path.stem
    run = result["runs"][0]
    solar, grid, car = _independent_scores(path, out)
    assert run["solar_wh"] == pytest.approx(solar, rel=0.005, abs=1.0)
    assert run["grid_wh"] == pytest.approx(grid, rel=0.005, abs=1.0)
    assert run["car_wh"] == pytest.approx(car, rel=0.005, abs=1.0)
    if result["oracle_wh"] > 0:
        assert run["capture"] == pytest.approx(solar / result["oracle_wh"], rel=0.005, abs=0.001)


async def test_a_replay_runs_the_real_controller_under_the_governors_rules() -> None:
    day = parse_day(
        lines_of([(0, 0, 400), (36000, 3000, 400), (36600, 300, 400), (37200, 6000, 400)]), name="s"
    )
    car = Car(arrival_s=36000 - 30, departure_s=39600, energy_wh=50_000)
    sim = await simulate(day, car, load_config(None, {}), mode="pv", reference=True)
    names = [r.controller for r in sim.runs]
    assert names == ["surplus", "reference-30s", "reference-5s"]
    surplus = sim.runs[0]
    assert 0 < surplus.capture <= 1.05 and surplus.car_wh > 0
    assert sim.series.t_s[0] == 36000 - 30
    on = [t for t, _, amps, _, _ in sim.series.rows() if amps > 0]
    assert on and all(6 <= a <= 16 for _, _, a, _, _ in sim.series.rows() if a > 0)


async def test_a_full_car_is_held_without_writes_or_phase_switches() -> None:
    # The sun swings every 15 minutes between what one phase and what three carry; the car
    # needs 3 kWh and is full within the first hour. Before the rule pv went on following the
    # sun for the full car: a phase switch and a few setpoints every quarter of an hour.
    swings = [(36000 + 900 * k, 9000 if k % 2 == 0 else 3200, 400) for k in range(12)]
    day = parse_day(lines_of([(0, 0, 400), *swings, (36000 + 900 * 12, 0, 400)]), name="swings")
    car = Car(arrival_s=35900, departure_s=36000 + 900 * 12, energy_wh=3_000)
    sim = await simulate(day, car, load_config(None, {}), mode="pv")
    rows = list(sim.series.rows())
    energy_wh, full_at = 0.0, None
    for t, car_w, _, _, _ in rows:
        energy_wh += car_w / 3600.0
        if full_at is None and energy_wh >= 2_999.0:
            full_at = t
    assert full_at is not None and full_at < 36000 + 3600
    after = [(amps, phases) for t, _, amps, phases, _ in rows if t > full_at + 300 + 90 + 60]
    changes = [b for a, b in itertools.pairwise(after) if a != b]
    assert {phases for _, phases in after} == {after[0][1]}, "a phase switch for a full car"
    assert not changes and after[0][0] >= 6.0
    assert sim.runs[0].car_wh == pytest.approx(3_000.0, abs=1.0)


@pytest.mark.parametrize(
    ("lag_s", "every_s", "polled", "late_wh"),
    [(2.0, 0.0, False, 1.0), (9.0, 0.0, False, 1.0), (0.0, 8.0, False, 20.0), (0.0, 8.0, True, 20.0)],
)
async def test_a_grid_meter_behind_the_box_changes_nothing_but_what_it_shows(
    lag_s: float, every_s: float, polled: bool, late_wh: float
) -> None:
    # The sun steps every two minutes. A meter that shows the car's power 2 s late (as many
    # do) makes every change of the current look like a step in the sun for two readings;
    # pv takes the surplus it set the current for until the car has followed (5 s), or for as
    # long as the meter is measured to take (9 s), or until the meter has taken a reading
    # after the change (one that reads every 8 s; polled over HTTP, its readings all look
    # fresh, and a move it has not shown yet is waited for beyond the delays measured so
    # far): the replay writes the same setpoints and pauses as with an exact meter. What the
    # slow meter costs is only that it shows each step in the sun late (every 8 s: 4 s late
    # here, 15 Wh of import and as much sun).
    steps = [(36000 + 120 * k, pv, 400) for k, pv in enumerate([5000, 7400, 4800, 8600, 6200, 9000, 5600])]
    day = parse_day(lines_of([(0, 0, 400), *steps, (36000 + 120 * len(steps), 0, 400)]), name="steps")
    car = Car(arrival_s=35000, departure_s=37200, energy_wh=50_000, phases="3")
    config = load_config(None, {})
    exact = await simulate(day, car, config, mode="pv")
    meter = MeterModel(lag_s=lag_s, every_s=every_s, polled=polled)
    late = await simulate(day, car, config, mode="pv", meter=meter)
    e, la = exact.runs[0], late.runs[0]
    assert e.setpoint_changes >= len(steps)
    assert la.setpoint_changes == e.setpoint_changes and la.pauses == e.pauses == 1
    assert la.solar_wh >= e.solar_wh - late_wh and la.grid_wh <= e.grid_wh + late_wh


async def test_a_polled_meter_that_updates_every_8_s_writes_no_more_than_the_5_s_reference() -> None:
    # Polled over HTTP, a meter that updates every 8 s inside gives readings that all look
    # fresh: pv can only wait as long as the meter was measured to take. A wait measured a
    # reading too short used to stay that short (the false step it caused ended the next
    # measurement at the same length), and on the clear summer day each change of the current
    # was followed by a false one: 40 setpoints on three phases against the 5 s reference's 32.
    day = load_day(find_day("clear-summer-2016-07-07"))
    car = parse_car("phases=3")
    polled = MeterModel(every_s=8.0, polled=True)
    sim = await simulate(day, car, load_config(None, {}), mode="pv", reference=True, meter=polled)
    surplus, _, five_s = sim.runs
    assert surplus.setpoint_changes <= five_s.setpoint_changes, (surplus.setpoint_changes, five_s)
    assert surplus.capture >= 0.999 and surplus.grid_share <= 0.001 and surplus.pauses == five_s.pauses


async def test_a_day_meter_that_reads_every_few_seconds_gives_the_last_reading_with_its_age() -> None:
    day = parse_day(lines_of([(0, 0, 400), (36000, 3000, 400), (36005, 5000, 400)]), name="m")
    clock = FakeClock(start=1000.0)
    meter = DayMeter(day, AmtronModel(clock), clock, t0=1000.0, day_t0=36000.0, meter=MeterModel(every_s=4.0))
    seen = []
    for _ in range(10):
        r = await meter.read()
        seen.append((r.read_at_s - 1000.0, r.grid_power_w))
        await clock.advance(1.0)
    # A new reading at 0, 4 and 8 s; the sun's step at 5 s shows in the one taken at 8 s.
    assert seen == [(0.0, -2600.0)] * 4 + [(4.0, -2600.0)] * 4 + [(8.0, -4600.0)] * 2


async def test_a_polled_day_meter_gives_the_same_values_stamped_with_the_time_of_each_poll() -> None:
    day = parse_day(lines_of([(0, 0, 400), (36000, 3000, 400), (36005, 5000, 400)]), name="m")
    clock = FakeClock(start=1000.0)
    polled = MeterModel(every_s=4.0, polled=True)
    meter = DayMeter(day, AmtronModel(clock), clock, t0=1000.0, day_t0=36000.0, meter=polled)
    seen = []
    for _ in range(10):
        r = await meter.read()
        seen.append((r.read_at_s - 1000.0, r.grid_power_w))
        await clock.advance(1.0)
    # The device still reads at 0, 4 and 8 s, but each poll looks fresh: its age says nothing.
    assert [w for _, w in seen] == [-2600.0] * 8 + [-4600.0] * 2
    assert [t for t, _ in seen] == [float(k) for k in range(10)]
    with pytest.raises(ValueError, match="every_s"):
        MeterModel(polled=True)


async def test_a_car_that_leaves_within_a_minute_is_replayed() -> None:
    # schedule's departure is whole minutes; a car built in code may leave at 10:50:30.
    day = parse_day(lines_of([(0, 0, 400), (36000, 3000, 400)]), name="m")
    car = Car(arrival_s=36000, departure_s=39030, energy_wh=5_000)
    assert plan_replay(load_config(None, {}), car).strategy_options["schedule"]["departure"] == "10:50"
    sim = await simulate(day, car, load_config(None, {}), mode="schedule")
    assert sim.series.t_s[-1] >= 39030 - 1


async def test_a_noisy_day_meter_jitters_the_same_on_every_replay() -> None:
    day = parse_day(lines_of([(0, 0, 400), (36000, 3000, 400)]), name="n")

    async def readings() -> list[float]:
        clock = FakeClock(start=1000.0)
        meter = DayMeter(
            day, AmtronModel(clock), clock, t0=1000.0, day_t0=36000.0, meter=MeterModel(noise_w=50.0)
        )
        out = []
        for _ in range(400):
            out.append((await meter.read()).grid_power_w)
            await clock.advance(1.0)
        return out

    first = await readings()
    assert first == await readings()  # seeded: a replay is repeatable
    assert statistics.fmean(first) == pytest.approx(-2600.0, abs=10.0)
    assert 42.0 < statistics.stdev(first) < 58.0


@pytest.mark.parametrize(("every_s", "polled"), [(0.0, False), (8.0, False), (8.0, True)])
async def test_a_noisy_grid_meter_changes_little_in_a_replay(every_s: float, polled: bool) -> None:
    # The sun steps every 10 minutes between 2.2 and 3.4 kW of surplus (one phase), the meter
    # jitters by 50 W (PV inverters and house loads do, from second to second): pv measures the
    # noise and follows the surplus's level, so the replay writes 10 setpoints against 5 with
    # an exact meter (before the noise was averaged out: 239) and takes the same sun. A meter
    # that reads every 8 s has its noise measured on its new readings: 11 against 5 (before: 158).
    # Polled over HTTP, the same meter gives each reading eight times, stamped with the time of
    # each poll: pv sees it hold its readings and takes a repeat as the reading it repeats
    # (12 setpoints, as unpolled; before, seven differences of 0 in eight measured the noise as
    # nothing, and pv followed it: 215).
    steps = [(36000 + 600 * k, pv, 400) for k, pv in enumerate([2900, 3600, 2600, 3800, 3100])]
    day = parse_day(lines_of([(0, 0, 400), *steps, (36000 + 600 * len(steps), 0, 400)]), name="steps")
    config = load_config(None, {})
    for phases in ("1", "1p3p"):
        car = Car(arrival_s=35000, departure_s=39000, energy_wh=50_000, phases=phases)
        exact = MeterModel(every_s=every_s, polled=polled)
        e = (await simulate(day, car, config, mode="pv", meter=exact)).runs[0]
        noisy = MeterModel(every_s=every_s, noise_w=50.0, polled=polled)
        n = (await simulate(day, car, config, mode="pv", meter=noisy)).runs[0]
        assert e.setpoint_changes == len(steps)
        assert n.setpoint_changes <= 2 * e.setpoint_changes + 2, (phases, n.setpoint_changes)
        assert n.pauses == e.pauses == 0
        assert n.solar_wh >= e.solar_wh - 10.0 and n.grid_wh <= e.grid_wh + 5.0, phases


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("--meter-lag", "-1", "outside 0 to 60 s"),
        ("--meter-lag", "soon", "not a number of seconds"),
        ("--meter-every", "61", "outside 0 to 60 s"),
        ("--meter-noise", "-5", "outside 0 to 1000 W"),
        ("--meter-noise", "loud", "not a number of watts"),
    ],
)
def test_a_bad_meter_option_is_refused_by_name(option: str, value: str, error: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "surplus.cli", "simulate", option, value, "overcast-2016-09-13"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert option in proc.stderr and error in proc.stderr, proc.stderr


def test_the_cli_replays_a_polled_meter_and_says_which_meter_it_scored(tmp_path: Path) -> None:
    day = tmp_path / "steps.csv"
    day.write_text(
        "\n".join(lines_of([(0, 0, 400), (36000, 3000, 400), (36600, 6000, 400), (37200, 0, 400)]))
    )
    car = ["--car", "arrival=10:00,departure=10:30,energy_kwh=50"]

    def simulate_cli(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "surplus.cli", "simulate", str(day), *car, *options],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    alone = simulate_cli("--meter-polled")
    assert alone.returncode == 2 and "--meter-polled needs --meter-every" in alone.stderr, alone.stderr
    table = simulate_cli("--meter-every", "8", "--meter-polled", "--meter-noise", "20")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1] == (
        "surplus's grid meter: a reading every 8 s (polled), 20 W of noise (the references': exact)"
    )
    shown = json.loads(simulate_cli("--meter-every", "8", "--meter-polled", "--json").stdout)
    assert shown["meter"] == {"lag_s": 0.0, "every_s": 8.0, "noise_w": 0.0, "polled": True}
    assert shown["runs"][0]["car_wh"] > 0
    exact = json.loads(simulate_cli("--json").stdout)
    assert exact["meter"] == {"lag_s": 0.0, "every_s": 0.0, "noise_w": 0.0, "polled": False}


def test_the_cli_says_what_is_wrong_with_a_day_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,pv_w,load_w\n0,1,2\n60,oops,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "surplus.cli", "simulate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{bad}:3: pv_w: 'oops' is not a number" in proc.stderr


def test_the_plot_is_a_png_of_the_right_size_and_not_blank(tmp_path: Path) -> None:
    import matplotlib.image

    from surplus.sim.plot import HEIGHT_PX, WIDTH_PX, plot_day

    day = parse_day(lines_of([(0, 0, 400), (36000, 3000, 400), (37800, 500, 400)]), name="steps")
    car = Car(arrival_s=36000, departure_s=39600, energy_wh=50_000)
    sim = asyncio.run(simulate(day, car, load_config(None, {})))
    png = tmp_path / "day.png"
    plot_day(str(png), sim)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (HEIGHT_PX, WIDTH_PX)
    assert pixels.std() > 0.05  # lines and text, not one colour


async def test_a_replayed_battery_above_battery_soc_min_gives_the_car_its_charging_power(
    tmp_path: Path,
) -> None:
    """The day's battery absorbs 2 kW at 90 %: with battery_soc_min 80 the car gets it, by default not."""
    lines = ["t_s,pv_w,load_w,battery_w,battery_soc"]
    lines += [
        f"{t},{3500 if 36000 <= t < 39600 else 0},500,{2000 if 36000 <= t < 39600 else 0},90"
        for t in range(0, 86400, 900)
    ]
    day = parse_day(lines, name="battery")
    car = Car(arrival_s=36000, departure_s=39600, energy_wh=50_000)
    config = tmp_path / "c.yaml"
    config.write_text(
        "chargers:\n  - id: wallbox\n    mode: pv\n    strategies:\n      pv: {battery_soc_min: 80}\n"
    )
    house_first = await simulate(day, car, load_config(None, {}))
    car_first = await simulate(day, car, load_config(str(config), {}))
    assert house_first.runs[0].car_wh < 100  # 1 kW left after the battery: below 6 A, never starts
    assert car_first.runs[0].car_wh > 2500  # ~3 kW for most of the hour


async def test_the_value_column_weighs_each_runs_import_as_pv_does(tmp_path: Path) -> None:
    # A three-phase box under a surplus that falls below its minimum for 8 minutes twice:
    # pv rides at 6 A (import) where the references stop. Value = sun - import_weight x grid,
    # for every run alike, with pv's weight (its declared default, or as configured).
    steps = [(0, 0), (36000, 8000), (36600, 3600), (37080, 8000), (37800, 3600), (38280, 8000)]
    day = parse_day(lines_of([(t, pv, 400) for t, pv in steps]), name="dips")
    car = Car(arrival_s=36000, departure_s=39600, energy_wh=50_000, phases="3")
    config = tmp_path / "c.yaml"
    config.write_text(
        "chargers:\n  - id: wallbox\n    mode: pv\n    strategies:\n      pv: {import_weight: 10}\n"
    )
    for cfg, weight in ((load_config(None, {}), 3.0), (load_config(str(config), {}), 10.0)):
        sim = await simulate(day, car, cfg, mode="pv", reference=True)
        assert sim.import_weight == weight
        as_json = sim.as_dict()
        assert as_json["import_weight"] == weight
        surplus = sim.runs[0]
        assert surplus.grid_wh > 10  # it did import, so the weight matters
        for run, shown in zip(sim.runs, as_json["runs"], strict=True):
            assert shown["value_wh"] == pytest.approx(run.solar_wh - weight * run.grid_wh, abs=0.1)
        table = format_table(sim).splitlines()
        assert "value kWh" in table[1] and table[-1].startswith(f"value = sun - {weight:g} x grid")
        cells = table[2].split()
        assert cells[0] == "surplus" and float(cells[6]) == pytest.approx(
            sim.value_wh(surplus) / 1000, abs=0.006
        )
