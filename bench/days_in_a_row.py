#!/usr/bin/env python3
"""pv over days in a row, remembering the car's sessions, against pv that knows nothing of them.

Every replay of ``bench/sun_capture.py`` starts a new controller: pv knows nothing of the
car. A controller that runs for weeks learns how often the car's sessions end full
(``FullCars`` in ``plugins/pv_sun.py``) and weighs an import by it. This replays the days
of a folder in date order for each car and box, twice: each day with a new pv that is
handed what the day before's learnt of the car's sessions (as on an installation that
is not restarted), and each day with a new pv that knows nothing (as ``sun_capture.py``).
It prints per day the weight pv went by, the sun and grid energy into the car, and the
totals with their value (sun - 3 x grid, as in ``sun_capture.py``) against the 5 s
reference's.

    bench/days_in_a_row.py --days surplus/sim/days [--car energy_kwh=10] [--car ...] [--json FILE]

Each day's car arrives at 08:00 and leaves at 18:00 (``--car`` changes it). The days of a
folder are not consecutive days of one year: what is learnt comes from days of other
seasons, as it would after a change of season.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from surplus.config import load_config
from surplus.sim.day import load_day
from surplus.sim.replay import make_strategies, plan_replay
from surplus.sim.score import parse_car
from surplus.sim.simulate_cli import simulate

BOXES = {"1p3p": "phases=1p3p", "3p": "phases=3"}
WEIGHT = 3.0
REF = "reference-5s"


def date_of(path: Path) -> str:
    found = re.search(r"\d{4}-\d{2}-\d{2}", path.stem)
    return found.group(0) if found else path.stem


def chain(job: tuple[list[str], str, str, bool]) -> list[dict[str, object]]:
    """One car and box over the days in order; ``carry``: each day's pv gets the car's sessions so far."""
    paths, car_spec, box, carry = job
    car = parse_car(",".join(filter(None, (car_spec, BOXES[box]))))
    config = load_config(None, {})
    plan = plan_replay(config, car)
    full_cars = None
    rows = []
    for path in paths:
        # A new pv each day, as bench/sun_capture.py has; with ``carry`` it is handed what the
        # one before learnt of the car's sessions (and only that: the sun's timers and spells
        # of a day are not carried over a replay's gap).
        strategies = make_strategies(config, plan)
        pv = strategies["pv"]
        if carry and full_cars is not None:
            pv.full_cars = full_cars  # type: ignore[attr-defined]
        full_cars = pv.full_cars  # type: ignore[attr-defined]
        weight = pv.import_weight  # type: ignore[attr-defined]
        sim = asyncio.run(
            simulate(load_day(path), car, config, mode="pv", reference=not carry, strategies=strategies)
        )
        runs = {r.controller: r for r in sim.runs}
        rows.append(
            {
                "day": Path(path).stem,
                "weight": weight,
                "sun": runs["surplus"].solar_wh,
                "grid": runs["surplus"].grid_wh,
                "ref5": (runs[REF].solar_wh, runs[REF].grid_wh) if REF in runs else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=Path, required=True, help="a folder of day CSVs")
    parser.add_argument("--car", action="append", help="a car (surplus simulate --car), e.g. energy_kwh=10")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    paths = [str(p) for p in sorted(args.days.glob("*.csv"), key=date_of)]
    cars = args.car or ["energy_kwh=40", "energy_kwh=10"]
    jobs = [(paths, car, box, carry) for car in cars for box in BOXES for carry in (True, False)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(chain, jobs))
    by_job = dict(zip(((j[1], j[2], j[3]) for j in jobs), results, strict=True))
    if args.json:
        args.json.write_text(
            json.dumps([[*j[1:], rows] for j, rows in zip(jobs, results, strict=True)], indent=1)
        )
    for car in cars:
        for box in BOXES:
            kept, fresh = by_job[(car, box, True)], by_job[(car, box, False)]
            print(f"\n## car {car}, box {box}: {len(paths)} days in date order")
            print("| day | weight | sun / grid kWh, remembering | sun / grid kWh, afresh |")
            print("|---|---|---|---|")
            for k, f in zip(kept, fresh, strict=True):
                print(
                    f"| {k['day']} | {k['weight']:.1f} | {k['sun'] / 1000:.2f} / {k['grid'] / 1000:.3f} "
                    f"| {f['sun'] / 1000:.2f} / {f['grid'] / 1000:.3f} |"
                )

            def total(rows: list[dict[str, object]], key: str) -> float:
                return sum(float(r[key]) for r in rows)  # type: ignore[arg-type]

            ref_sun = sum(r["ref5"][0] for r in fresh)  # type: ignore[index]
            ref_grid = sum(r["ref5"][1] for r in fresh)  # type: ignore[index]
            for name, rows in (("remembering", kept), ("afresh", fresh)):
                sun, grid = total(rows, "sun"), total(rows, "grid")
                value = sun - WEIGHT * grid
                print(
                    f"{name}: sun {sun / 1000:.2f} kWh, grid {grid / 1000:.3f} kWh, value {value / 1000:.2f} kWh "
                    f"({(value - (ref_sun - WEIGHT * ref_grid)) / 1000:+.2f} against the 5 s reference)"
                )


if __name__ == "__main__":
    main()
