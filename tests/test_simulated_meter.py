"""The simulated PV + house meter: deterministic per seed and clock, sign convention, night."""

from __future__ import annotations

from typing import Any

import pytest

from surplus.clock import FakeClock
from surplus.meter import Meter, MeterEnv
from surplus.options import OptionError
from surplus.plugins import collect_meters, make_plugin_manager
from surplus.types import MeterReading

FACTORY = collect_meters(make_plugin_manager(load_entrypoints=False))["simulated"]
HOUR_S = 3600.0


def build(clock: FakeClock, charger_w: float = 0.0, **options: Any) -> Meter:
    return FACTORY("grid", options, MeterEnv(clock=clock, charger_power_w=lambda: charger_w))


async def day(seed: int, *, step_s: float = 600.0, hours: float = 24.0, **options: Any) -> list[MeterReading]:
    clock = FakeClock(start=5000.0)
    meter = build(clock, seed=seed, start_hour=0.0, **options)
    await meter.start()
    readings = []
    for _ in range(int(hours * HOUR_S / step_s)):
        readings.append(await meter.read())
        clock.set(clock.now() + step_s)
    await meter.stop()
    return readings


async def test_same_seed_same_day_on_any_clock_start() -> None:
    a = await day(7, cloudiness=0.8)
    clock = FakeClock(start=123456.0)  # a different clock origin: only elapsed time matters
    meter = build(clock, seed=7, start_hour=0.0, cloudiness=0.8)
    b = []
    for _ in range(len(a)):
        b.append(await meter.read())
        clock.set(clock.now() + 600.0)
    assert [(r.grid_power_w, r.pv_power_w, r.house_power_w) for r in a] == [
        (r.grid_power_w, r.pv_power_w, r.house_power_w) for r in b
    ]


async def test_another_seed_gives_another_day() -> None:
    a = await day(1, cloudiness=0.8, step_s=60.0)
    b = await day(2, cloudiness=0.8, step_s=60.0)
    assert [r.grid_power_w for r in a] != [r.grid_power_w for r in b]


@pytest.mark.parametrize("hour", [0.0, 3.0, 5.9, 6.0, 20.0, 21.5, 23.9])
async def test_no_pv_at_night(hour: float) -> None:
    clock = FakeClock()
    meter = build(clock, start_hour=hour, cloudiness=1.0)
    reading = await meter.read()
    assert reading.pv_power_w == 0.0
    assert reading.grid_power_w == reading.house_power_w  # all imported
    assert reading.grid_power_w is not None and reading.grid_power_w > 0


@pytest.mark.parametrize(
    ("hour", "want_pv_w"),
    [(13.0, 8000.0), (9.5, 4000.0), (16.5, 4000.0)],  # a clear sky: sin^2 bell peaking at 13:00
)
async def test_clear_sky_bell(hour: float, want_pv_w: float) -> None:
    reading = await build(FakeClock(), start_hour=hour, cloudiness=0.0).read()
    assert reading.pv_power_w == pytest.approx(want_pv_w, abs=0.1)


@pytest.mark.parametrize(
    ("charger_w", "expect"),
    [(0.0, "export"), (11000.0, "import")],
)
async def test_sign_convention_positive_is_import(charger_w: float, expect: str) -> None:
    clock = FakeClock()
    meter = build(clock, charger_w, start_hour=13.0, cloudiness=0.0, base_load_w=400)
    r = await meter.read()
    assert r.pv_power_w is not None and r.house_power_w is not None
    assert r.grid_power_w == pytest.approx(r.house_power_w + charger_w - r.pv_power_w, abs=0.2)
    assert (r.grid_power_w > 0) == (expect == "import")
    assert r.read_at_s == clock.now()
    assert r.meter_id == "grid"


async def test_the_clock_drives_the_day_and_it_repeats_tomorrow() -> None:
    clock = FakeClock()
    meter = build(clock, start_hour=2.0, cloudiness=0.0)
    assert (await meter.read()).pv_power_w == 0.0
    clock.set(clock.now() + 11 * HOUR_S)  # 13:00
    assert (await meter.read()).pv_power_w == pytest.approx(8000.0, abs=0.1)
    clock.set(clock.now() + 24 * HOUR_S)  # 13:00 the next day
    assert (await meter.read()).pv_power_w == pytest.approx(8000.0, abs=0.1)


async def test_clouds_dip_and_appliances_spike() -> None:
    clear = await day(3, step_s=60.0, cloudiness=0.0)
    cloudy = await day(3, step_s=60.0, cloudiness=1.0)
    assert all(c.pv_power_w <= k.pv_power_w + 0.1 for c, k in zip(cloudy, clear, strict=True))  # type: ignore[operator]
    assert sum(c.pv_power_w or 0 for c in cloudy) < 0.9 * sum(k.pv_power_w or 0 for k in clear)
    house = [r.house_power_w or 0 for r in clear]
    assert min(house) >= 400.0
    assert max(house) >= 2400.0  # a kettle or the washing machine heater


async def test_no_charger_callback_means_no_charger_load() -> None:
    clock = FakeClock()
    meter = FACTORY("grid", {"start_hour": 2.0}, MeterEnv(clock=clock))
    r = await meter.read()
    assert r.grid_power_w == r.house_power_w


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"pv_peak_w": -1}, "pv_peak_w"),
        ({"base_load_w": "lots"}, "base_load_w"),
        ({"seed": 1.5}, "seed"),
        ({"start_hour": 24}, "start_hour"),
        ({"cloudiness": 2}, "cloudiness"),
        ({"cloudyness": 0.5}, "cloudyness"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(OptionError) as info:
        build(FakeClock(), **options)
    assert info.value.option == option
