"""A measured day as a step function: PV, house load and (optionally) a home battery.

The input of ``surplus simulate``: a CSV file with a header row and one row per
sample. The time column is ``t_s`` (seconds from the day's midnight) or
``time`` (ISO 8601 local time, e.g. ``2022-03-18T12:01:00``); then ``pv_w``
(PV power), ``load_w`` (the house without the charger) and, optionally,
``battery_w`` (a home battery, positive while it charges) and ``battery_soc``
(its state of charge in percent, for the strategies' battery options). Any resolution from
1 s to 15 min; a row's values hold until the next row (a step function), the
last row's until the end of the day, and before the first row the first row's.
Fields are separated by commas, or by semicolons when the header has no comma.
Errors name the file and its 1-based line number.
"""

from __future__ import annotations

import bisect
import csv
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

DAY_S = 86400.0
#: The coarsest resolution accepted: a longer step is a gap in the data.
MAX_STEP_S = 15 * 60.0
TIME_COLUMNS = ("t_s", "time")
REQUIRED = ("pv_w", "load_w")
OPTIONAL = ("battery_w", "battery_soc")


class DayError(ValueError):
    """A day file that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Day:
    """Samples of one day; value ``i`` holds from ``t_s[i]`` until ``t_s[i + 1]`` (or ``end_s``)."""

    name: str
    t_s: array[float]
    pv_w: array[float]
    load_w: array[float]
    battery_w: array[float]
    #: When the last row's values stop holding.
    end_s: float
    #: Any row with a battery power other than 0.
    has_battery: bool = False
    #: The battery's state of charge per row (%), when the file has the column.
    battery_soc: array[float] | None = None

    @property
    def start_s(self) -> float:
        return self.t_s[0]

    def index(self, t: float) -> int:
        """The row in force at ``t`` (the first row before the day starts)."""
        return max(0, bisect.bisect_right(self.t_s, t) - 1)

    def surplus_w(self, i: int) -> float:
        """The sun the car could take in row ``i``: PV minus the house and a charging battery, at least 0.

        A battery that discharges is not the sun's, so it adds nothing.
        """
        return max(0.0, self.pv_w[i] - self.load_w[i] - max(0.0, self.battery_w[i]))

    def segments(self, start_s: float, end_s: float) -> Iterable[tuple[float, float, int]]:
        """``(from_s, to_s, row)`` pieces of ``[start_s, end_s)`` in which one row holds."""
        if end_s <= start_s:
            return
        i = self.index(start_s)
        t = start_s
        n = len(self.t_s)
        while t < end_s:
            nxt = self.t_s[i + 1] if i + 1 < n else math.inf
            to = min(nxt, end_s)
            yield t, to, i
            t = to
            i += 1


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DayError(f"{where}: {column}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise DayError(f"{where}: {column}: {text.strip()!r} is not a finite number")
    return value


def _clock_time(text: str, where: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DayError(
            f"{where}: time: {text.strip()!r} is not an ISO 8601 time (e.g. 2022-03-18T12:01:00)"
        ) from None
    return stamp.replace(tzinfo=None)  # local time as written


def load_day(path: str | Path) -> Day:
    """Read and check a day file (see the module docstring).

    :raises DayError: naming ``path`` and the 1-based line of the first problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DayError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DayError(f"{path}: not a text file") from None
    return parse_day(text.splitlines(), name=str(path))


def parse_day(lines: list[str], *, name: str) -> Day:
    """Parse the lines of a day file; ``name`` is used in errors."""
    rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.startswith("#")]
    if not rows:
        raise DayError(f"{name}: empty file (expected a header such as t_s,pv_w,load_w)")
    header_line, header_text = rows[0]
    delimiter = ";" if ";" in header_text and "," not in header_text else ","
    header = [h.strip() for h in next(csv.reader([header_text], delimiter=delimiter))]
    where = f"{name}:{header_line}"
    time_cols = [c for c in TIME_COLUMNS if c in header]
    if len(time_cols) != 1:
        raise DayError(f"{where}: header: needs exactly one time column, t_s or time (got {header_text!r})")
    for column in REQUIRED:
        if column not in header:
            raise DayError(f"{where}: header: missing column {column!r} (got {header_text!r})")
    if len(set(header)) != len(header):
        raise DayError(f"{where}: header: a column is named twice")
    time_col = time_cols[0]
    col = {c: header.index(c) for c in (time_col, *REQUIRED, *OPTIONAL) if c in header}

    t_s, pv, load, battery, soc = array("d"), array("d"), array("d"), array("d"), array("d")
    midnight: datetime | None = None
    last_line = header_line
    for n, line in rows[1:]:
        where = f"{name}:{n}"
        cells = next(csv.reader([line], delimiter=delimiter))
        if len(cells) != len(header):
            raise DayError(f"{where}: {len(cells)} fields, the header has {len(header)}")
        if time_col == "t_s":
            t = _number(cells[col["t_s"]], "t_s", where)
        else:
            stamp = _clock_time(cells[col["time"]], where)
            if midnight is None:
                midnight = stamp.replace(hour=0, minute=0, second=0, microsecond=0)
            t = (stamp - midnight).total_seconds()
        p = _number(cells[col["pv_w"]], "pv_w", where)
        ld = _number(cells[col["load_w"]], "load_w", where)
        b = _number(cells[col["battery_w"]], "battery_w", where) if "battery_w" in col else 0.0
        if "battery_soc" in col:
            charge = _number(cells[col["battery_soc"]], "battery_soc", where)
            if not 0 <= charge <= 100:
                raise DayError(f"{where}: battery_soc: {charge:g} is not a percentage (0..100)")
            soc.append(charge)
        if p < 0:
            raise DayError(f"{where}: pv_w: {p:g} W is negative (PV power is 0 or more)")
        if ld < 0:
            raise DayError(f"{where}: load_w: {ld:g} W is negative (the house's consumption is 0 or more)")
        if t_s:
            step = t - t_s[-1]
            if step <= 0:
                raise DayError(
                    f"{where}: {time_col}: {t:g} s is not after the previous row's {t_s[-1]:g} s "
                    f"(line {last_line}); rows must be sorted by time, each time once"
                )
            if step > MAX_STEP_S:
                raise DayError(
                    f"{where}: {time_col}: a gap of {step / 60:.1f} min after line {last_line}; "
                    f"rows may be at most {MAX_STEP_S / 60:g} min apart"
                )
        elif t < 0:
            raise DayError(f"{where}: {time_col}: {t:g} s is before midnight")
        t_s.append(t)
        pv.append(p)
        load.append(ld)
        battery.append(b)
        last_line = n
    if not t_s:
        raise DayError(f"{name}:{header_line}: no data rows after the header")
    end = max(DAY_S, t_s[-1] + (t_s[-1] - t_s[-2] if len(t_s) > 1 else 1.0))
    return Day(
        name=name,
        t_s=t_s,
        pv_w=pv,
        load_w=load,
        battery_w=battery,
        end_s=end,
        has_battery=any(b != 0.0 for b in battery),
        battery_soc=soc if "battery_soc" in col else None,
    )


def hhmm(t_s: float) -> str:
    """Seconds from midnight as ``HH:MM`` (or ``HH:MM:SS`` when not on a minute)."""
    whole = round(t_s)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" if s == 0 else f"{h:02d}:{m:02d}:{s:02d}"
