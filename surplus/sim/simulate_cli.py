"""``surplus simulate DAY.csv``: how much sun would surplus have put into the car on that day?

Replays the day through the real controller (see :mod:`surplus.sim.replay`),
scores it against the oracle (:mod:`surplus.sim.score`) and, with
``--reference``, against two plain reference controllers
(:mod:`surplus.sim.reference`) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plugins import builtin_strategy_infos
from .day import Day, DayError, hhmm, load_day
from .meter_model import EXACT_METER, MeterModel
from .score import Car, CarError, RunScore, Series, oracle_wh, parse_car, score_run

#: The real days shipped with surplus (see days/README.md there); ``surplus simulate NAME`` finds them.
DAYS_DIR = Path(__file__).with_name("days")
MODES = ("pv", "minpv", "schedule", "fixed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """One day, one car: the oracle and the runs (surplus first, then the references)."""

    day: Day
    car: Car
    oracle_wh: float
    runs: tuple[RunScore, ...]
    series: Series
    ticks: int
    #: An imported Wh counts this many Wh of sun in :meth:`value_wh` (pv's ``import_weight``).
    import_weight: float
    #: The grid meter surplus read (the references see the surplus exactly).
    meter: MeterModel = EXACT_METER

    def value_wh(self, run: RunScore) -> float:
        """The run as pv's decisions weigh it: sun into the car less the import, weighted.

        A controller ahead on it took more sun than its extra import costs (or imported
        less than the sun it gave up was worth): one number for the trade that capture
        and grid share show on two axes.
        """
        return run.solar_wh - self.import_weight * run.grid_wh

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.name,
            "car": self.car.describe(),
            "oracle_wh": round(self.oracle_wh, 1),
            "import_weight": self.import_weight,
            "meter": self.meter.as_dict(),
            "runs": [{**r.as_dict(), "value_wh": round(self.value_wh(r), 1)} for r in self.runs],
        }


def shipped_days() -> list[Path]:
    """The real days that come with surplus, by name."""
    return sorted(DAYS_DIR.glob("*.csv"))


def find_day(name: str) -> Path:
    """A path as given, or the name of a shipped day (with or without ``.csv``)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (DAYS_DIR / name, DAYS_DIR / f"{name}.csv"):
        if candidate.exists():
            return candidate
    return path  # load_day says it does not exist


async def simulate(
    day: Day,
    car: Car,
    config: Any,
    *,
    mode: str = "pv",
    reference: bool = False,
    charger_id: str | None = None,
    meter: MeterModel = EXACT_METER,
    strategies: Mapping[str, Any] | None = None,
) -> Simulation:
    """Replay ``day`` with the real controller (and the references) and score every run.

    ``meter``: how surplus's grid meter differs from an exact one (behind the box, reading
    every few seconds, polled, noisy). The references see the surplus exactly, as always.
    ``strategies``: carried over from an earlier day (see :func:`replay`).
    """
    from .reference import REFERENCES, run_reference
    from .replay import plan_replay, replay

    plan = plan_replay(config, car, charger_id=charger_id)
    best = oracle_wh(day, car, plan.setup)
    result = await replay(
        day,
        car,
        config,
        mode=mode,
        charger_id=charger_id,
        meter=meter,
        strategies=strategies,
    )
    runs = [score_run("surplus", mode, day, result.series, result.counts, best)]
    if reference:
        for ref in REFERENCES:
            series, counts = run_reference(day, car, plan.setup, ref)
            runs.append(score_run(ref.name, mode, day, series, counts, best))
    return Simulation(
        day=day,
        car=car,
        oracle_wh=best,
        runs=tuple(runs),
        series=result.series,
        ticks=result.ticks,
        import_weight=import_weight(plan.strategy_options),
        meter=meter,
    )


def import_weight(strategy_options: Mapping[str, Mapping[str, Any]]) -> float:
    """pv's ``import_weight`` as configured, else the default the pv plugin declares."""
    configured = strategy_options.get("pv", {}).get("import_weight")
    if configured is not None:
        return float(configured)
    return float(builtin_strategy_infos()["pv"].options["import_weight"])


def format_table(sim: Simulation) -> str:
    """The human-readable result: one header, one row per controller."""
    c = sim.car
    lines = [
        f"day {sim.day.name}: car {hhmm(c.arrival_s)}-{hhmm(c.departure_s)}, needs {c.energy_wh / 1000:g} kWh, "
        f"max {c.max_a:g} A, phases {c.phases}; the most sun it could take: {sim.oracle_wh / 1000:.2f} kWh",
        *(
            []
            if sim.meter.exact
            else [f"surplus's grid meter: {sim.meter.describe()} (the references': exact)"]
        ),
        f"{'controller':15} {'mode':8} {'capture':>7} {'grid share':>10} {'sun kWh':>8} {'grid kWh':>8} "
        f"{'value kWh':>9} {'car kWh':>8} {'setpoints':>9} {'pauses':>6} {'switches':>8}",
    ]
    for r in sim.runs:
        lines.append(
            f"{r.controller:15} {r.mode:8} {r.capture:7.3f} {r.grid_share:10.3f} {r.solar_wh / 1000:8.2f} "
            f"{r.grid_wh / 1000:8.2f} {sim.value_wh(r) / 1000:9.2f} {r.car_wh / 1000:8.2f} "
            f"{r.setpoint_changes:9d} {r.pauses:6d} {r.phase_switches:8d}"
        )
    lines.append(
        f"value = sun - {sim.import_weight:g} x grid (pv's import_weight: the trade pv's decisions weigh)"
    )
    return "\n".join(lines)


def write_series(path: str, series: Series) -> None:
    """``t_s,car_w,current_a,phases,grid_w`` per tick (t_s from the day's midnight)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "car_w", "current_a", "phases", "grid_w"])
        for t, car, amps, phases, grid in series.rows():
            out.writerow([f"{t:g}", f"{car:.1f}", f"{amps:g}", f"{phases:g}", f"{grid:.1f}"])


def _cmd(args: argparse.Namespace) -> int:
    from surplus.config import ConfigError, load_config

    from .replay import ReplayError

    try:
        car = parse_car(args.car or "")
        path = find_day(args.day)
        day = load_day(path)
        if path.parent == DAYS_DIR:  # a shipped day goes by its name
            day = dataclasses.replace(day, name=path.stem)
        config = load_config(args.config, {})
    except (CarError, DayError, ConfigError) as exc:
        print(f"surplus simulate: {exc}", file=sys.stderr)
        return 2
    if args.meter_polled and not args.meter_every:
        print(
            "surplus simulate: --meter-polled needs --meter-every S (how often the device reads)",
            file=sys.stderr,
        )
        return 2
    meter = MeterModel(
        lag_s=args.meter_lag, every_s=args.meter_every, noise_w=args.meter_noise, polled=args.meter_polled
    )
    try:
        sim = asyncio.run(
            simulate(
                day,
                car,
                config,
                mode=args.mode,
                reference=args.reference,
                charger_id=args.charger,
                meter=meter,
            )
        )
    except (ReplayError, ValueError) as exc:
        print(f"surplus simulate: {exc}", file=sys.stderr)
        return 2
    if args.out_csv:
        write_series(args.out_csv, sim.series)
    if args.plot:
        from .plot import PlotUnavailable, plot_day

        try:
            plot_day(args.plot, sim)
        except PlotUnavailable as exc:
            print(f"surplus simulate: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(sim.as_dict()))
    else:
        print(format_table(sim))
    return 0


HELP = """\
Replay a measured day through the real controller, strategies, safety governor,
AMTRON driver and AMTRON model on a fake clock, and score how much of the sun
went into the car.

DAY is a CSV file: a time column (t_s = seconds from midnight, or time = ISO
8601 local time), pv_w (PV power), load_w (the house without the charger) and
optionally battery_w (a home battery, positive while it charges; replayed as
recorded) and battery_soc (%). Any resolution from 1 s to 15 min; each row's
values hold until the next row (a step function), the last row's until the end
of the day. Commas or semicolons separate the fields. DAY may also name a day
shipped with surplus (see --list-days).

capture = sun into the car / the most sun the car could have taken (the oracle:
nothing below 6 A on every allowed phase count); grid share = grid energy /
energy into the car; value = sun into the car - import_weight x grid energy
(pv's option, 3 unless configured: the trade pv weighs, in one number). The
box, its limits and the strategy options come from the config (-c; default:
the built-in demo config).
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``simulate`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay a measured day and score the sun that went into the car",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("day", nargs="?", metavar="DAY", help="day CSV file, or the name of a shipped day")
    p.add_argument("-c", "--config", help="YAML config: charger limits, strategy options, simulator profile")
    p.add_argument(
        "--mode",
        default="pv",
        help=f"the strategy to replay: {', '.join(MODES)} or a plugin's (default pv)",
    )
    p.add_argument("--charger", metavar="ID", help="which charger of the config (default: the first)")
    p.add_argument(
        "--car",
        metavar="SPEC",
        help="arrival=08:00,departure=18:00,energy_kwh=40,max_a=16,phases=1p3p (the defaults); "
        "capacity_kwh=..,soc=.. instead of energy_kwh; phases 1, 3 (the box stays on three) or 1p3p",
    )
    p.add_argument("--reference", action="store_true", help="also run the 30 s and 5 s reference controllers")
    p.add_argument(
        "--meter-lag",
        metavar="S",
        type=_lag_s,
        default=0.0,
        help="the grid meter shows the car's power S seconds late, as slow meters do (0 to 60; default 0)",
    )
    p.add_argument(
        "--meter-every",
        metavar="S",
        type=_lag_s,
        default=0.0,
        help="the grid meter takes a new reading only every S seconds (0 to 60; default 0: every read)",
    )
    p.add_argument(
        "--meter-noise",
        metavar="W",
        type=_noise_w,
        default=0.0,
        help="each grid-meter reading is off by Gaussian noise of W watts (sigma; 0 to 1000; default 0)",
    )
    p.add_argument(
        "--meter-polled",
        action="store_true",
        help="with --meter-every: the readings carry the time they were fetched, not the time the meter "
        "took them (a device polled over HTTP)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out-csv", metavar="FILE", help="write t_s,car_w,current_a,phases,grid_w per tick")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw the day (needs matplotlib: pip install 'surplus[plot]')"
    )
    p.add_argument("--list-days", action="store_true", help="list the days shipped with surplus and exit")
    p.set_defaults(func=_run)


def _bounded(high: float, unit: str, what: str) -> Callable[[str], float]:
    """An argparse type: a number from 0 to ``high`` (in ``unit``); anything else refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of {what}: {text!r}") from None
        if not 0.0 <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} {unit} is outside 0 to {high:g} {unit}")
        return value

    return parse


#: ``--meter-lag``, ``--meter-every``: seconds; ``--meter-noise``: watts.
_lag_s = _bounded(60.0, "s", "seconds")
_noise_w = _bounded(1000.0, "W", "watts")


def _run(args: argparse.Namespace) -> int:
    if args.list_days:
        for path in shipped_days():
            print(path.stem)
        return 0
    if args.day is None:
        print("surplus simulate: give a DAY (a CSV file or a shipped day; see --list-days)", file=sys.stderr)
        return 2
    return _cmd(args)
