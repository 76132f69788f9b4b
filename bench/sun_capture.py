"""Sun capture on the shipped real days: surplus against the oracle and the reference controllers.

For every shipped day (``surplus/sim/days``) × mode (pv, minpv) × box (1p/3p
switching, three phases only) it runs ``surplus simulate --reference`` with the
default config and car (08:00-18:00, 40 kWh, 16 A) and prints a Markdown table:
capture and grid share of surplus and of both references, pause/resume cycles,
phase switches and setpoint changes. Then:

- reaction time: a day whose surplus steps up and down every 3 minutes (within
  one phase count and across), time from the step to the new setpoint on the
  bus, p50/p95, up and down;
- replay speed: a 24 h day at 1 s ticks with the car there all day (wall time,
  µs per tick), and its peak RSS (a child process per replay).

    .venv/bin/python bench/sun_capture.py            # everything (a few minutes)
    .venv/bin/python bench/sun_capture.py --quick    # pv on the 1p/3p box only
    .venv/bin/python bench/sun_capture.py --days DIR # pv on the days in DIR, and the
                                                     # issue's criteria day by day
    .venv/bin/python bench/sun_capture.py --meter-every 8 --meter-polled  # a real meter

``--meter-lag``, ``--meter-every``, ``--meter-polled`` and ``--meter-noise`` replay
surplus's runs with such a grid meter (as ``surplus simulate`` does; the references
see the surplus exactly): the README's "Real meters" table.

``--car SPEC`` (``surplus simulate``'s car keys but ``phases``, e.g. ``energy_kwh=10``) and
``--config FILE`` (e.g. other pv options) replay another car or config on every day (the
reaction times and the replay speed keep the defaults); the value columns then weigh the
import with that config's ``import_weight``.

``--days`` takes any directory of day files, such as the days kept out of tuning that
``bench/holdout_days.py`` builds. Its criteria (a day's category is its file name's
start): on cloudy and overcast days a 1p/3p box captures at least the 5 s reference and
draws no more grid share than the 30 s one; on other days it captures >= 0.995 with a
grid share <= 0.01; a three-phase box is not worse than the 30 s reference in either;
and no day has more setpoint changes than the 5 s reference or more than twice the 30 s
reference's phase switches. Ratios are compared as printed (3 decimals).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surplus.config import ConfigError, load_config  # noqa: E402
from surplus.sim.day import load_day, parse_day  # noqa: E402
from surplus.sim.meter_model import EXACT_METER, MeterModel  # noqa: E402
from surplus.sim.score import Car, CarError, parse_car  # noqa: E402
from surplus.sim.simulate_cli import shipped_days, simulate  # noqa: E402

BOXES = {"1p3p": "phases=1p3p", "3p": "phases=3"}


@dataclass(frozen=True)
class Setup:
    """What every replay of a run shares: surplus's grid meter, the car (``--car``), the config."""

    meter: MeterModel = EXACT_METER
    car: str = ""
    config: str | None = None


def one(job: tuple[str, str, str, Setup]) -> dict[str, object]:
    path, mode, box, setup = job
    day = load_day(path)
    car = parse_car(",".join(filter(None, (setup.car, BOXES[box]))))
    config = load_config(setup.config, {})
    sim = asyncio.run(simulate(day, car, config, mode=mode, reference=True, meter=setup.meter))
    out = sim.as_dict()
    return {
        "day": Path(path).stem,
        "mode": mode,
        "box": box,
        "import_weight": out["import_weight"],
        "runs": out["runs"],
    }


def table(results: list[dict[str, object]]) -> str:
    head = (
        "| day | mode | box | surplus capture / grid | 30 s ref | 5 s ref | cycles s/30/5 | switches s/30/5 "
        "| setpoints s/30/5 |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        runs = r["runs"]
        assert isinstance(runs, list)
        s, a, b = runs
        cells = [f"{x['capture']:.3f} / {x['grid_share']:.3f}" for x in (s, a, b)]
        lines.append(
            f"| {r['day']} | {r['mode']} | {r['box']} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {s['pauses']}/{a['pauses']}/{b['pauses']} "
            f"| {s['phase_switches']}/{a['phase_switches']}/{b['phase_switches']} "
            f"| {s['setpoint_changes']}/{a['setpoint_changes']}/{b['setpoint_changes']} |"
        )
    return "\n".join(lines)


def step_day() -> list[str]:
    """Surplus steps every 3 min: 2.0 <-> 3.0 kW (one phase), then 6.0 <-> 8.0 kW (three)."""
    lines = ["t_s,pv_w,load_w"]
    t = 0
    while t < 86400:
        h = t / 3600
        if 10 <= h < 12:
            pv = 2000 if (t // 180) % 2 == 0 else 3000
        elif 12 <= h < 14:
            pv = 6000 if (t // 180) % 2 == 0 else 8000
        else:
            pv = 0
        lines.append(f"{t},{pv},0")
        t += 60
    return lines


def reaction_times() -> dict[str, list[float]]:
    day = parse_day(step_day(), name="steps")
    car = Car(arrival_s=9.5 * 3600, departure_s=14 * 3600, energy_wh=200_000)
    sim = asyncio.run(simulate(day, car, load_config(None, {}), mode="pv"))
    s = sim.series
    out: dict[str, list[float]] = {"up": [], "down": []}
    rows = list(zip(s.t_s, s.current_a, strict=True))
    for i in range(1, len(day.t_s)):
        t0 = day.t_s[i]
        before, after = day.pv_w[i - 1], day.pv_w[i]
        if before == after or not 10.25 * 3600 <= t0 < 14 * 3600 or t0 == 12 * 3600:
            continue
        start = next((k for k, (t, _) in enumerate(rows) if t >= t0), None)
        if start is None:
            continue
        level = rows[start - 1][1]
        for t, amps in rows[start:]:
            if (after > before and amps > level + 0.05) or (after < before and 0 < amps < level - 0.05):
                out["up" if after > before else "down"].append(t - t0)
                break
    return out


SPEED_CHILD = """
import asyncio, json, resource, sys, time
sys.path.insert(0, {root!r})
from surplus.config import load_config
from surplus.sim.day import load_day
from surplus.sim.score import Car
from surplus.sim.replay import replay
day = load_day({day!r})
car = Car(arrival_s=0, departure_s=86400, energy_wh=500_000)
t = time.perf_counter()
r = asyncio.run(replay(day, car, load_config(None, {{}}), mode="pv"))
wall = time.perf_counter() - t
print(json.dumps({{"wall_s": wall, "ticks": r.ticks,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def speed(day_path: Path) -> dict[str, float]:
    code = SPEED_CHILD.format(root=str(ROOT), day=str(day_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def criteria(results: list[dict[str, object]]) -> list[str]:
    """Each day that misses one of the criteria (see the module docstring), one line each."""
    misses = []
    for r in results:
        runs = r["runs"]
        assert isinstance(runs, list)
        s, a, b = runs
        day, box = str(r["day"]), str(r["box"])
        cap, grid = round(s["capture"], 3), round(s["grid_share"], 3)
        if box == "3p":
            floors = {
                "capture": (round(a["capture"], 3), "30 s ref"),
                "grid": (round(a["grid_share"], 3), "30 s ref"),
            }
        elif day.startswith(("cloudy", "overcast")):
            floors = {
                "capture": (round(b["capture"], 3), "5 s ref"),
                "grid": (round(a["grid_share"], 3), "30 s ref"),
            }
        else:
            floors = {"capture": (0.995, "floor"), "grid": (0.01, "ceiling")}
        if cap < floors["capture"][0]:
            misses.append(
                f"{day} {box}: capture {cap:.3f} < {floors['capture'][0]:.3f} ({floors['capture'][1]})"
            )
        if grid > floors["grid"][0]:
            misses.append(
                f"{day} {box}: grid share {grid:.3f} > {floors['grid'][0]:.3f} ({floors['grid'][1]})"
            )
        if s["setpoint_changes"] > b["setpoint_changes"]:
            misses.append(
                f"{day} {box}: {s['setpoint_changes']} setpoint changes > {b['setpoint_changes']} (5 s ref)"
            )
        if s["phase_switches"] > 2 * a["phase_switches"]:
            misses.append(
                f"{day} {box}: {s['phase_switches']} phase switches > 2 x {a['phase_switches']} (30 s ref)"
            )
    return misses


def score_days(folder: Path, setup: Setup, json_out: Path | None = None) -> None:
    """pv on every day in ``folder``, both boxes: the table, then the criteria and the means
    (and the raw results in ``json_out``)."""
    days = sorted(folder.glob("*.csv"))
    if not days:
        raise SystemExit(f"no day files (*.csv) in {folder}")
    jobs = [(str(p), "pv", b, setup) for p in days for b in ("1p3p", "3p")]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(one, jobs))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1))
    print(table(results))
    setpoints = sum(
        int(runs[0]["setpoint_changes"]) for runs in (r["runs"] for r in results) if isinstance(runs, list)
    )
    print(f"\nsurplus's setpoint changes over the {len(jobs)} replays: {setpoints:,}")
    misses = criteria(results)
    replays = len({line.split(":")[0] for line in misses})
    print(f"\n{len(misses)} misses, in {replays} of {len(jobs)} replays:")
    for line in misses:
        print(f"  {line}")
    weight = results[0]["import_weight"]
    print(f"value = sun - {weight} x grid energy (the config's import_weight)")
    for box in ("1p3p", "3p"):
        rows = [r["runs"] for r in results if r["box"] == box]
        dc = statistics.mean(float(x[0]["capture"]) - float(x[2]["capture"]) for x in rows)  # type: ignore[index]
        dg = statistics.mean(float(x[0]["grid_share"]) - float(x[1]["grid_share"]) for x in rows)  # type: ignore[index]
        print(
            f"mean over {len(rows)} days, {box}: capture - 5 s ref {dc:+.4f}, grid share - 30 s ref {dg:+.4f}"
        )
        for k, ref in ((1, "30 s"), (2, "5 s")):
            dv = [(float(x[0]["value_wh"]) - float(x[k]["value_wh"])) / 1000 for x in rows]  # type: ignore[index]
            behind = sum(1 for v in dv if v < -0.1)
            print(
                f"  value - {ref} ref, {box}: {sum(dv):+.2f} kWh over {len(rows)} days, "
                f"behind by more than 0.1 kWh on {behind}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pv on the 1p/3p box only")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results")
    parser.add_argument("--days", type=Path, metavar="DIR", help="score pv on the day files in DIR instead")
    parser.add_argument(
        "--meter-lag", metavar="S", type=float, default=0.0, help="grid meter S s behind the box"
    )
    parser.add_argument("--meter-every", metavar="S", type=float, default=0.0, help="a reading every S s")
    parser.add_argument("--meter-polled", action="store_true", help="readings stamped when polled")
    parser.add_argument("--meter-noise", metavar="W", type=float, default=0.0, help="noise of W (sigma)")
    parser.add_argument("--car", metavar="SPEC", default="", help="the car, e.g. energy_kwh=10 (not phases)")
    parser.add_argument("-c", "--config", metavar="FILE", help="a config file instead of the defaults")
    args = parser.parse_args()
    try:
        meter = MeterModel(
            lag_s=args.meter_lag, every_s=args.meter_every, noise_w=args.meter_noise, polled=args.meter_polled
        )
    except ValueError as exc:
        parser.error(str(exc))
    if "phases" in args.car:
        parser.error("--car: the boxes set phases (1p/3p and three phases are both replayed)")
    try:
        parse_car(args.car)
        load_config(args.config, {})
    except (CarError, ConfigError) as exc:
        parser.error(str(exc))
    setup = Setup(meter=meter, car=args.car, config=args.config)
    if args.car or args.config:
        print(f"car: {args.car or 'the default'}; config: {args.config or 'the defaults'}\n")
    if meter != EXACT_METER:
        print(f"surplus's grid meter: {meter.describe()} (the references': exact)\n")
    if args.days:
        score_days(args.days, setup, Path(args.json) if args.json else None)
        return
    modes = ("pv",) if args.quick else ("pv", "minpv")
    boxes = ("1p3p",) if args.quick else ("1p3p", "3p")
    jobs = [(str(p), m, b, setup) for p in shipped_days() for m in modes for b in boxes]
    wall = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(one, jobs))
    print(table(results))
    print(f"\n{len(jobs)} replays in {time.perf_counter() - wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

    times = reaction_times()
    for way in ("up", "down"):
        v = times[way]
        print(f"reaction {way:4}: p50 {pct(v, 0.5):.0f} s, p95 {pct(v, 0.95):.0f} s ({len(v)} steps)")
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "day.csv"
        flat.write_text(
            "t_s,pv_w,load_w\n" + "".join(f"{t},{5000 if 6 * 3600 <= t < 20 * 3600 else 0},400\n"
                                          for t in range(0, 86400, 900))
        )  # fmt: skip
        shipped = next(p for p in shipped_days() if "cloudy" in p.stem)
        for name, path in (("flat 5 kW day", flat), (shipped.stem, shipped)):
            runs = [speed(path) for _ in range(2)]
            best = min(runs, key=lambda r: r["wall_s"])
            print(
                f"replay speed, {name}, 24 h at 1 s ticks: {best['wall_s']:.1f} s wall "
                f"({best['wall_s'] / best['ticks'] * 1e6:.0f} µs per tick), peak RSS {best['rss_mb']:.0f} MB"
            )
    print(
        f"bench peak RSS (this process): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(f"median capture, surplus pv 1p3p: {statistics.median(_captures(results)):.3f}")


def _captures(results: list[dict[str, object]]) -> list[float]:
    out = []
    for r in results:
        if r["mode"] == "pv" and r["box"] == "1p3p":
            runs = r["runs"]
            assert isinstance(runs, list)
            out.append(float(runs[0]["capture"]))
    return out


if __name__ == "__main__":
    main()
