"""Build 36 more real days, from the same sources as the shipped ones, to check the pv rules on.

The shipped days (``surplus/sim/days``) are what the rules are tuned and reported on. A
rule that only fits them is no gain, so this script builds days that are *not* shipped,
with the functions of ``bench/build_days.py`` (same PV scaling, household load, night mask
and gap filling), into a directory of your choice, and ``bench/sun_capture.py --days DIR``
scores them against the references:

    python bench/holdout_days.py --out /tmp/holdout --pvlib-sdist pvlib-0.16.1.tar.gz
    .venv/bin/python bench/sun_capture.py --days /tmp/holdout

It needs what ``build_days.py`` needs (pvanalytics, demandlib, pvlib and the pvlib source
archive; see its docstring); they are not project dependencies, so use a separate venv.
The days were chosen by the stats ``build_days.py --all`` prints, category by category:

* clear-summer: NREL SERF East 15-min days of high energy, smooth, no drop over 1 kW;
* cloudy-15min: the most variable SERF East days after the two shipped ones, and the day
  with the most drops over 1 kW (6 Sep 2016);
* overcast: the lowest-energy SERF East days after the shipped ones;
* cloudy-1min, clear-1min, overcast-1min: BSRN Payerne, June 2016, by their 1-min steps
  and energy (the shipped 17 and 26 June excluded);
* winter-15min: the three SERF West January 2022 days that are not shipped;
* partly-cloudy-1min: SERF East 1-min, 19 March 2022 (the 18th is shipped).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_days as bd

EAST15, EAST1, WEST15, PAYERNE = "serf_east_15min", "serf_east_1min", "serf_west_15min", "bsrn_payerne_ghi"

#: (category, source, year, month, days)
PICKS = (
    ("clear-summer", EAST15, 2016, 8, (20, 31)),
    ("clear-summer", EAST15, 2016, 9, (10, 16, 25)),
    ("clear-summer", EAST15, 2016, 10, (4,)),
    ("cloudy-15min", EAST15, 2016, 7, (3, 15, 23)),
    ("cloudy-15min", EAST15, 2016, 9, (6, 21, 22)),
    ("cloudy-15min", EAST15, 2016, 10, (6,)),
    ("overcast", EAST15, 2016, 8, (24,)),
    ("overcast", EAST15, 2016, 9, (29, 30)),
    ("cloudy-1min", PAYERNE, 2016, 6, (1, 6, 9, 15, 18, 19, 25, 28, 29, 30)),
    ("clear-1min", PAYERNE, 2016, 6, (10, 23, 24)),
    ("overcast-1min", PAYERNE, 2016, 6, (2, 12, 21)),
    ("winter-15min", WEST15, 2022, 1, (2, 3, 4)),
    ("partly-cloudy-1min", EAST1, 2022, 3, (19,)),
)


def holdout_days() -> list[bd.Day]:
    days = [bd.Day(name, src, date(y, m, d)) for name, src, y, m, ds in PICKS for d in ds]
    shipped = {(d.source, d.day) for d in bd.DAYS}
    clash = [d for d in days if (d.source, d.day) in shipped]
    if clash:
        raise SystemExit(f"shipped days in the holdout list: {clash}")
    return days


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the day files")
    parser.add_argument("--pvlib-sdist", type=Path, required=True, help="pvlib-0.16.1.tar.gz")
    args = parser.parse_args(argv)
    days = holdout_days()
    series = {src: bd.read_source(bd.SOURCES[src], args.pvlib_sdist) for src in {d.source for d in days}}
    profile = bd.read_h25()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for day in days:
        built = bd.build_day(day, series[day.source], profile)
        (args.out / bd.file_name(day)).write_text(bd.csv_text(built))
        rows.append(bd.table_row(bd.file_name(day), built))
    bd.print_table(f"{len(days)} days, not shipped, in {args.out}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
