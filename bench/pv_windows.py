"""Where a strategy gains and loses against the reference controllers, window by window.

Replays one day (``surplus simulate``'s replay, default config and car) with the
strategy and both references, splits the day into windows and prints, per window
where they differ, the sun into the car and the grid energy of each controller
(Wh), the phases the strategy used (0: not drawing) and the differences. The
totals end with the weighted score ``sun - import_weight x grid`` (the trade-off
the pv strategy prices its rules with), so a change can be judged by where it
moved energy, not only by the day's two ratios.

    .venv/bin/python bench/pv_windows.py cloudy-1min-2016-06-17 --box 1p3p
    .venv/bin/python bench/pv_windows.py cloudy-1min-2016-06-26 --box 3p --window 300 --all

The references have no 5-minute hold between a pause and a resume (see
``surplus/sim/reference.py``), so on days where pausing pays they can score above
what a strategy bound by the box's rules can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surplus.config import load_config  # noqa: E402
from surplus.sim.day import Day, DayError, load_day  # noqa: E402
from surplus.sim.reference import REFERENCES, run_reference  # noqa: E402
from surplus.sim.replay import plan_replay  # noqa: E402
from surplus.sim.score import Series, parse_car  # noqa: E402
from surplus.sim.simulate_cli import find_day, simulate  # noqa: E402

BOXES = {"1p3p": "phases=1p3p", "3p": "phases=3"}


@dataclass
class Window:
    sun_wh: float = 0.0
    grid_wh: float = 0.0
    phases: set[int] = field(default_factory=set)


def windows(day: Day, series: Series, width_s: int) -> dict[int, Window]:
    """Sun into the car and grid energy per window (1 s ticks, the day's surplus)."""
    out: dict[int, Window] = {}
    for t, car_w, _amps, phases, _grid in series.rows():
        surplus = day.surplus_w(day.index(t))
        w = out.setdefault(int(t // width_s) * width_s, Window())
        w.sun_wh += min(car_w, surplus) * series.tick_s / 3600.0
        w.grid_wh += max(0.0, car_w - surplus) * series.tick_s / 3600.0
        w.phases.add(int(phases) if car_w > 0 else 0)
    return out


def hhmm(t: int) -> str:
    return f"{t // 3600:02d}:{t % 3600 // 60:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("day", help="a day CSV or the name of a shipped day")
    parser.add_argument("--box", choices=tuple(BOXES), default="1p3p")
    parser.add_argument("--mode", default="pv")
    parser.add_argument("--window", type=int, default=600, help="window length in s (default 600)")
    parser.add_argument("--all", action="store_true", help="every window, not only where they differ")
    parser.add_argument("--import-weight", type=float, default=3.0, help="for the weighted total (default 3)")
    args = parser.parse_args()
    if args.window < 1:
        parser.error("--window must be at least 1 s")

    try:
        day = load_day(find_day(args.day))
    except DayError as exc:
        parser.error(str(exc))
    car = parse_car(BOXES[args.box])
    config = load_config(None, {})
    sim = asyncio.run(simulate(day, car, config, mode=args.mode))
    setup = plan_replay(config, car).setup
    names = [args.mode] + [r.name.removeprefix("reference-") for r in REFERENCES]
    runs = [sim.series] + [run_reference(day, car, setup, r)[0] for r in REFERENCES]
    per = [windows(day, s, args.window) for s in runs]

    print(f"{'window':6} | " + " | ".join(f"{n:>6} sun/grid" for n in names) + f" | {args.mode} phases | "
          f"sun-{names[2]} grid-{names[1]}")  # fmt: skip
    for t in sorted(set().union(*per)):
        ws = [p.get(t, Window()) for p in per]
        d_sun, d_grid = ws[0].sun_wh - ws[2].sun_wh, ws[0].grid_wh - ws[1].grid_wh
        if args.all or abs(d_sun) >= 20 or abs(d_grid) >= 10:
            cells = " | ".join(f"{w.sun_wh:6.0f}/{w.grid_wh:6.0f}" for w in ws)
            print(f"{hhmm(t):6} | {cells} | {sorted(ws[0].phases)!s:12} | {d_sun:+7.0f} {d_grid:+7.0f}")
    print()
    for name, p in zip(names, per, strict=True):
        sun = sum(w.sun_wh for w in p.values())
        grid = sum(w.grid_wh for w in p.values())
        print(
            f"{name:>6}: sun {sun:7.0f} Wh, grid {grid:6.0f} Wh, "
            f"sun - {args.import_weight:g} x grid {sun - args.import_weight * grid:7.0f} Wh"
        )
    print(
        f"oracle (the most sun the car could take): {sim.oracle_wh:.0f} Wh; car needs {car.energy_wh:.0f} Wh"
    )


if __name__ == "__main__":
    main()
