"""How fast does the real control loop replay time on the fake clock?

Runs one simulated hour (1 s ticks) of the real Controller, AMTRON driver and
SafetyGovernor over the in-memory model bus, a few times, and prints the wall
time per simulated hour and the speed-up. Target: under 1 s per hour.

    .venv/bin/python bench/loop_hour.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surplus.clock import FakeClock
from surplus.sim.model import AmtronModel, EvProfile
from tests.loop_support import build_controller

HOUR_S = 3600.0


async def one_hour() -> tuple[float, int, int]:
    clock = FakeClock()
    model = AmtronModel(clock, ev=EvProfile(soc=0.2, capacity_wh=80_000))
    controller, bus = build_controller(clock, model, fixed_current_a=10)
    wall = time.perf_counter()
    task = asyncio.ensure_future(controller.run(duration_s=HOUR_S))
    await clock.advance(HOUR_S + 1)
    await task
    elapsed = time.perf_counter() - wall
    await bus.close()
    return elapsed, controller.ticks, model.record.reads


def main() -> None:
    runs = [asyncio.run(one_hour()) for _ in range(8)]
    walls = [r[0] for r in runs]
    ticks, reads = runs[0][1], runs[0][2]
    best, median = min(walls), statistics.median(walls)
    print(f"simulated hour: {ticks} ticks, {reads} Modbus block reads in the model")
    print(f"wall time per simulated hour: best {best:.3f} s, median {median:.3f} s (target < 1 s)")
    print(f"speed-up over real time: {HOUR_S / median:,.0f}x; per tick {median / ticks * 1e6:.0f} us")


if __name__ == "__main__":
    main()
