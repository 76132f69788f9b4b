"""How much of the sun goes into the car? Whole simulated days, per mode.

Replays 06:00-20:00 of the simulated meter's day (several seeds and cloud
levels) through the real Controller, AMTRON driver, SafetyGovernor and the
AMTRON model on the fake clock, once per mode, and prints per day:

- car: energy into the car (kWh);
- surplus: what the house alone would have exported over the same hours (kWh);
- used: share of that surplus that went into the car instead of the grid;
- import: extra grid energy the car caused (kWh), and its share of the car's energy;
- writes: current changes sent to the box; switches: phase-switch requests.

    .venv/bin/python bench/pv_day.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.loop_support import replay_day

HOURS = 14.0
DAYS = [(1, 0.3), (2, 0.3), (3, 0.6), (4, 0.9)]
MODES = ["pv", "minpv", "fixed"]


async def main() -> None:
    print(f"{'mode':6} {'seed':>4} {'clouds':>6} {'car':>7} {'surplus':>8} {'used':>6} {'import':>7} {'share':>6} "
          f"{'writes':>6} {'switches':>8} {'wall':>6}")  # fmt: skip
    for mode in MODES:
        for seed, clouds in DAYS:
            options = {"seed": seed, "start_hour": 6.0, "pv_peak_w": 8000, "cloudiness": clouds}
            wall = time.perf_counter()
            day = await replay_day(mode, hours=HOURS, meter_options=options)
            wall = time.perf_counter() - wall
            share = day.extra_import_wh / day.car_wh if day.car_wh else 0.0
            print(
                f"{mode:6} {seed:>4} {clouds:>6.1f} {day.car_wh / 1000:>7.1f} {day.export_alone_wh / 1000:>8.1f} "
                f"{day.surplus_used:>6.0%} {day.extra_import_wh / 1000:>7.2f} {share:>6.1%} "
                f"{day.current_writes:>6} {day.phase_switches:>8} {wall:>5.1f}s"
            )
    print("fixed = 10 A all day regardless of the sun (the naive reference).")


if __name__ == "__main__":
    asyncio.run(main())
