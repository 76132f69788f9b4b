"""Regenerate the measured PV fixture days in ``surplus/sim/days/``.

Each fixture is one real, measured day of PV output plus a standard household load, written as

    t_s,pv_w,load_w

with ``t_s`` in seconds from local standard-time midnight (0..86399), ``pv_w`` the PV AC power and
``load_w`` the household consumption without an EV charger, both in whole watts.  A row's values
hold until the next row.  The PV keeps the resolution of its source (1 or 15 minutes); the load
is the 15-minute BDEW profile, so every row lies on the PV grid.

Inputs (read from the installed packages and one downloaded source archive; the script itself
downloads nothing):

* ``pvanalytics`` ships a few NREL measurements from its campus in Golden, Colorado: AC power of
  the SERF East array (15-min, Jul-Oct 2016; 1-min, 18-19 Mar 2022), AC power of the SERF West
  array (15-min, Jan 2022) and 1-min global horizontal irradiance from the MIDC Baseline
  Measurement System (20 Jan 2022).  All clocks are MST (UTC-7, no daylight saving).
* ``demandlib`` ships the BDEW 2025 standard load profile H25 (15-min values per month and day
  type, normalised to 1,000,000 kWh/a).
* The ``pvlib`` source distribution (sdist, ``pvlib-0.16.1.tar.gz``; its ``tests/data`` are not
  in the wheel) ships a whole month of 1-min BSRN measurements from Payerne, Switzerland
  (``tests/data/bsrn-pay0616.dat.gz``, June 2016, UTC).  Its global horizontal irradiance gives
  the cloudy 1-min days; clock CET (UTC+1, no daylight saving), household wall clock
  Europe/Zurich.  ``--pvlib-sdist`` names the archive; it is read in place, not unpacked.
* ``pvlib`` (installed with pvanalytics) gives the sun's elevation for the night mask and reads
  the BSRN station-to-archive format (``pvlib.iotools.read_bsrn``).

How the numbers are made:

* Array power is multiplied by ``PV_SCALE`` so that a clear July noon at SERF East (about
  4.3 kW) becomes about 8.5 kW, i.e. a 10 kWp roof.  The same factor is used for every array.
* Irradiance becomes power as ``pv_w = irradiance / 1000 W/m2 * 10 kWp * 0.85``.  The only
  irradiance days used here are horizontal (GHI) and get no tilt gain, so they stand for a flat
  array.
* Readings are set to 0 W while the sun is below the horizon for the whole sample (this removes
  inverter standby draw and sensor offsets) and negative readings are clipped to 0.  A missing
  sample at night is 0; a missing sample in daylight holds the previous value (the step-function
  reading of the data, no invented shape).  The build reports how many samples were filled.
* Load: H25 for the calendar month and day type (Mon-Fri workday, Saturday, Sunday; public
  holidays are not looked up), times the BDEW dynamisation polynomial for the day of the year,
  scaled to 4500 kWh/a.  The profile is wall-clock time; on dates when the site keeps daylight
  saving time (Colorado, Switzerland) it is moved one hour earlier on the standard-time axis,
  the last hour wrapping round from the start of the same profile day.

How days were chosen: every whole day of the sources is a candidate and ``--all`` prints one row
of statistics per candidate.  Clear summer: the high-energy 15-min days with the smallest
variability and no 1 kW drop (a workday and a Sunday).  Cloudy: the two most variable 15-min summer
days.  The two 1-min SERF East days are both nearly clear, with minute-scale jitter of up to about
0.8 kW but no step above 20 % of the peak; the more variable one (18 March) is kept.  Cloudy 1-min:
the two June 2016 Payerne days with the most 1-min steps above 20 % of the peak, a workday (17 June)
and a Sunday (26 June).  Overcast: the
lowest-energy 15-min days; only 12 Oct 2016 has a surplus peak inside 1-3 kW, 13 Sep 2016 (the next
one) is dull except for a short bright spell near 3.8 kW.  Winter: the clear 1-min MIDC day, the
SERF West day with a cloudy morning (5 Jan 2022) and the next day, when snow covered the SERF West
modules and they produced almost nothing although the sky was bright.  The choice is ``DAYS``.

Install the inputs in a scratch virtualenv; they are deliberately not dependencies of the
project:

    python3 -m venv /tmp/daysvenv
    /tmp/daysvenv/bin/pip install pvanalytics demandlib pandas
    /tmp/daysvenv/bin/pip download --no-deps --no-binary :all: pvlib==0.16.1 -d /tmp/wheels
    /tmp/daysvenv/bin/python bench/build_days.py           # write the CSVs, print their table
    /tmp/daysvenv/bin/python bench/build_days.py --all     # also print every candidate day
    /tmp/daysvenv/bin/python bench/build_days.py --check   # compare with the committed files

(``--pvlib-sdist PATH`` if the archive is not ``/tmp/wheels/pvlib-0.16.1.tar.gz``.)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import io
import sys
import tarfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

OUT_DIR = Path(__file__).resolve().parent.parent / "surplus" / "sim" / "days"

# The clear July 2016 days at SERF East peak at 4.29-4.45 kW (median about 4.33 kW); 1.96 turns that
# into about 8.5 kW, the noon output of a 10 kWp roof.
PV_SCALE = 1.96
KWP = 10.0  # nominal size the irradiance days are converted for
PERFORMANCE_RATIO = 0.85
ANNUAL_LOAD_KWH = 4500.0
BDEW_NORM_KWH = 1_000_000.0  # the H25 values are kWh per quarter hour for this yearly consumption
SURPLUS_MIN_W = 1400  # about 6 A on one phase: the smallest useful charging power

DEFAULT_PVLIB_SDIST = Path("/tmp/wheels/pvlib-0.16.1.tar.gz")

DAY_S = 86_400
QUARTER_S = 900


@dataclass(frozen=True)
class Site:
    latitude: float
    longitude: float
    altitude_m: float
    standard_tz: str  # clock of the fixture rows (fixed offset, no daylight saving)
    civil_tz: ZoneInfo  # wall clock of the people whose load is modelled


# NREL South Table Mountain campus, Golden, Colorado (SERF and the BMS are a few hundred m apart).
GOLDEN = Site(39.742, -105.18, 1829.0, "Etc/GMT+7", ZoneInfo("America/Denver"))  # MST
# BSRN station Payerne (PAY), MeteoSwiss Aerological Station, as given in the file's LR0004.
PAYERNE = Site(46.815, 6.944, 491.0, "Etc/GMT-1", ZoneInfo("Europe/Zurich"))  # CET


@dataclass(frozen=True)
class Source:
    file: str  # in pvanalytics/data, or in tests/data of the pvlib sdist
    column: str
    resolution_s: int
    kind: str  # "ac" (array AC power in W) or "irradiance" (W/m2)
    site: Site = GOLDEN
    origin: str = "pvanalytics"  # or "pvlib-sdist" (a BSRN station-to-archive file)


SOURCES = {
    "serf_east_15min": Source("serf_east_15min_ac_power.csv", "ac_power", 900, "ac"),
    "serf_east_1min": Source("serf_east_1min_ac_power.csv", "ac_power__752", 60, "ac"),
    "serf_west_15min": Source("serf_west_15min.csv", "ac_power__773", 900, "ac"),
    "midc_bms_ghi": Source("midc_bms_ghi_20220120.csv", "Global CMP22 (vent/cor) [W/m^2]", 60, "irradiance"),
    "bsrn_payerne_ghi": Source("bsrn-pay0616.dat.gz", "ghi", 60, "irradiance", PAYERNE, "pvlib-sdist"),
}


@dataclass(frozen=True)
class Day:
    name: str
    source: str
    day: date


DAYS = (
    Day("clear-summer", "serf_east_15min", date(2016, 7, 7)),
    Day("clear-summer", "serf_east_15min", date(2016, 8, 14)),
    Day("partly-cloudy-1min", "serf_east_1min", date(2022, 3, 18)),
    Day("cloudy-1min", "bsrn_payerne_ghi", date(2016, 6, 17)),
    Day("cloudy-1min", "bsrn_payerne_ghi", date(2016, 6, 26)),
    Day("cloudy-15min", "serf_east_15min", date(2016, 7, 6)),
    Day("cloudy-15min", "serf_east_15min", date(2016, 9, 4)),
    Day("overcast", "serf_east_15min", date(2016, 10, 12)),
    Day("overcast", "serf_east_15min", date(2016, 9, 13)),
    Day("winter-clear-1min", "midc_bms_ghi", date(2022, 1, 20)),
    Day("winter-15min", "serf_west_15min", date(2022, 1, 5)),
    Day("winter-snow-15min", "serf_west_15min", date(2022, 1, 6)),
)


def file_name(d: Day) -> str:
    return f"{d.name}-{d.day.isoformat()}.csv"


# --------------------------------------------------------------------------- sources


def read_pvanalytics(src: Source):  # -> pd.DataFrame
    import pandas as pd

    path = importlib.resources.files("pvanalytics") / "data" / src.file
    with importlib.resources.as_file(path) as p:
        return pd.read_csv(p, index_col=0)


def read_pvlib_sdist(src: Source, sdist: Path):  # -> pd.DataFrame, UTC index
    from pvlib.iotools import read_bsrn

    if not sdist.is_file():
        raise SystemExit(
            f"{sdist} not found; get it with\n"
            "    pip download --no-deps --no-binary :all: pvlib==0.16.1 -d /tmp/wheels\n"
            "or name it with --pvlib-sdist"
        )
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(f"/tests/data/{src.file}")]
        if len(members) != 1:
            raise SystemExit(f"{sdist} has no single tests/data/{src.file}")
        raw = tar.extractfile(members[0]).read()
    with gzip.open(io.BytesIO(raw), "rt") as text:
        frame, _metadata = read_bsrn(text, logical_records=("0100",))
    return frame


def read_source(src: Source, sdist: Path):  # -> pd.Series in W (scaled), standard-time index
    import pandas as pd

    frame = read_pvlib_sdist(src, sdist) if src.origin == "pvlib-sdist" else read_pvanalytics(src)
    index = pd.to_datetime(frame.index)
    if index.tz is None:
        index = index.tz_localize(src.site.standard_tz)
    else:
        index = index.tz_convert(src.site.standard_tz)
    values = frame[src.column].astype(float).to_numpy()
    series = pd.Series(values, index=index).sort_index()
    # SERF West stamps its samples at :01/:16/:31/:46; put them on the quarter hour they start.
    series.index = series.index.floor(f"{src.resolution_s}s")
    series = series[~series.index.duplicated(keep="first")]
    if src.kind == "ac":
        return series * PV_SCALE
    # W/m2 -> W: irradiance / (1000 W/m2) * 10 kWp * 1000 W/kW * performance ratio
    return series / 1000.0 * KWP * 1000.0 * PERFORMANCE_RATIO


# --------------------------------------------------------------------------- load profile


def read_h25():  # -> {(month, daytype): list of 96 kWh values}
    import pandas as pd

    path = importlib.resources.files("demandlib") / "bdew" / "bdew_data" / "h25.csv"
    with importlib.resources.as_file(path) as p:
        frame = pd.read_csv(p, header=[0, 1], index_col=0)
    if frame.shape != (96, 36):
        raise SystemExit(f"unexpected H25 layout {frame.shape}")
    months = list(dict.fromkeys(frame.columns.get_level_values(0)))  # Januar..Dezember, in order
    profile = {}
    for (month_name, daytype), column in frame.items():
        profile[(months.index(month_name) + 1, daytype)] = [float(v) for v in column]
    return profile


def dynamisation(day_of_year: int) -> float:
    t = float(day_of_year)
    return -3.92e-10 * t**4 + 3.2e-7 * t**3 - 7.02e-5 * t**2 + 2.1e-3 * t + 1.24


def bdew_daytype(d: date) -> str:
    return {5: "SA", 6: "FT"}.get(d.weekday(), "WT")


def observes_dst(d: date, site: Site) -> bool:
    noon = datetime(d.year, d.month, d.day, 12, tzinfo=site.civil_tz)
    return bool(noon.dst())


def load_quarters(profile, d: date, site: Site) -> list[float]:
    """Household load in W for the 96 standard-time quarter hours of ``d``."""
    kwh = profile[(d.month, bdew_daytype(d))]
    factor = dynamisation(d.timetuple().tm_yday) * ANNUAL_LOAD_KWH / BDEW_NORM_KWH
    watts = [v * factor * 4 * 1000 for v in kwh]  # kWh per 15 min -> mean W
    if observes_dst(d, site):
        watts = watts[4:] + watts[:4]  # 11:00 standard time is 12:00 on the wall clock
    return watts


# --------------------------------------------------------------------------- one day


@dataclass
class Built:
    day: Day
    res_s: int
    t_s: list[int]
    pv_w: list[int]
    load_w: list[int]
    filled_night: int
    filled_day: int
    zeroed_night: int  # readings above 0 W that fell entirely before sunrise or after sunset


def sun_down(times, res_s: int, site: Site):  # -> numpy bool array, sun down for the whole sample
    import pandas as pd
    from pvlib.solarposition import get_solarposition

    where = (site.latitude, site.longitude, site.altitude_m)
    start = get_solarposition(times, *where)["elevation"].to_numpy()
    end = get_solarposition(times + pd.Timedelta(seconds=res_s), *where)["elevation"].to_numpy()
    return (start < 0) & (end < 0)


def build_day(day: Day, series, profile) -> Built:
    import pandas as pd

    src = SOURCES[day.source]
    res = src.resolution_s
    midnight = pd.Timestamp(day.day).tz_localize(src.site.standard_tz)
    grid = pd.date_range(midnight, periods=DAY_S // res, freq=f"{res}s")
    pv = series.reindex(grid)
    night = sun_down(grid, res, src.site)
    missing = pv.isna().to_numpy()
    filled_night = int((missing & night).sum())
    filled_day = int((missing & ~night).sum())
    zeroed_night = int(((pv.to_numpy() > 0) & night).sum())
    pv = pv.where(~night, 0.0).ffill().fillna(0.0).clip(lower=0.0)
    quarters = load_quarters(profile, day.day, src.site)
    t_s = [k * res for k in range(DAY_S // res)]
    return Built(
        day=day,
        res_s=res,
        t_s=t_s,
        pv_w=[round(v) for v in pv.to_numpy()],
        load_w=[round(quarters[t // QUARTER_S]) for t in t_s],
        filled_night=filled_night,
        filled_day=filled_day,
        zeroed_night=zeroed_night,
    )


def csv_text(b: Built) -> str:
    lines = ["t_s,pv_w,load_w"]
    lines += [f"{t},{p},{ld}" for t, p, ld in zip(b.t_s, b.pv_w, b.load_w, strict=True)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- statistics


def stats(b: Built) -> dict[str, float]:
    dt_h = b.res_s / 3600.0
    pv_kwh = sum(b.pv_w) * dt_h / 1000
    surplus = [max(0, p - ld) for p, ld in zip(b.pv_w, b.load_w, strict=True)]
    steps = [b.pv_w[i + 1] - b.pv_w[i] for i in range(len(b.pv_w) - 1)]
    peak = max(b.pv_w)
    return {
        "pv_kwh": pv_kwh,
        "peak_w": peak,
        "load_kwh": sum(b.load_w) * dt_h / 1000,
        "surplus_kwh": sum(surplus) * dt_h / 1000,
        "surplus_peak_w": max(surplus),
        "surplus_h": sum(1 for s in surplus if s >= SURPLUS_MIN_W) * dt_h,
        # sum of |step| in kW per kWh produced: ~2*peak/energy for a clean bell, more with clouds
        "variability": (sum(abs(s) for s in steps) / 1000 / pv_kwh) if pv_kwh > 0 else 0.0,
        "drops_1kw": sum(1 for s in steps if s < -1000),
        "big_steps": sum(1 for s in steps if peak > 0 and abs(s) > 0.2 * peak),
    }


HEADER = (
    "| file | res | PV kWh | peak W | load kWh | surplus kWh | surplus peak W | h ≥1.4 kW "
    "| variability 1/h | drops >1 kW | steps >20 % peak |"
)


def table_row(label: str, b: Built) -> str:
    s = stats(b)
    res = f"{b.res_s // 60} min"
    return (
        f"| {label} | {res} | {s['pv_kwh']:.1f} | {s['peak_w']:.0f} | {s['load_kwh']:.1f} "
        f"| {s['surplus_kwh']:.1f} | {s['surplus_peak_w']:.0f} | {s['surplus_h']:.2f} "
        f"| {s['variability']:.2f} | {s['drops_1kw']} | {s['big_steps']} |"
    )


def print_table(title: str, rows: list[str]) -> None:
    print(f"\n{title}\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for row in rows:
        print(row)


# --------------------------------------------------------------------------- main


def whole_days(series, res_s: int) -> list[date]:
    """Days for which the source covers at least the daylight part (pre-dawn gaps are fine)."""
    per_day = series.groupby(series.index.date).size()
    return [d for d, n in per_day.items() if n >= 0.75 * DAY_S / res_s]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also print every candidate day")
    parser.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    parser.add_argument(
        "--pvlib-sdist",
        type=Path,
        default=DEFAULT_PVLIB_SDIST,
        help=f"pvlib source archive with tests/data (default {DEFAULT_PVLIB_SDIST})",
    )
    args = parser.parse_args(argv)

    profile = read_h25()
    series = {key: read_source(src, args.pvlib_sdist) for key, src in SOURCES.items()}

    if args.all:
        rows = []
        for key, s in series.items():
            for d in whole_days(s, SOURCES[key].resolution_s):
                b = build_day(Day(key, key, d), s, profile)
                rows.append(table_row(f"{key} {d.isoformat()} {bdew_daytype(d)}", b))
        print_table("All candidate days", rows)

    rows = []
    problems = []
    if not args.check:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
    for day in DAYS:
        b = build_day(day, series[day.source], profile)
        name = file_name(day)
        text = csv_text(b)
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                problems.append(name)
        else:
            path.write_text(text)
        rows.append(table_row(name, b))
        if b.filled_day or b.filled_night or b.zeroed_night:
            print(
                f"{name}: filled {b.filled_night} missing night and {b.filled_day} missing daylight"
                f" samples; set {b.zeroed_night} positive night readings to 0"
            )
    print_table("Fixture days", rows)
    if problems:
        print("differs from the committed file:", ", ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
