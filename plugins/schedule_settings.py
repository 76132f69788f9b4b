"""The settings of strategy "schedule": departure, energy, days, zone, cheap-tariff windows.

Pure (no I/O): the options checked into a frozen :class:`ScheduleSettings`,
and the local-time arithmetic of the departures (Unix seconds from the zone's
rules, so a DST change does not shift a plan by an hour). What the options
mean is in :mod:`.schedule`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from surplus.options import OptionError, check_known, did_you_mean, number
from surplus.types import MAX_CURRENT_A, MIN_CURRENT_A

from .pv_sun import PvSettings, parse_settings

OPTIONS = (
    "departure",
    "energy_kwh",
    "days",
    "timezone",
    "plan_current_a",
    "margin_min",
    "pv",
    "windows",
)
WINDOW_OPTIONS = ("start", "end", "current_a")
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_WORDS = {name.lower(): i for i, name in enumerate(DAY_NAMES)} | {
    full: i
    for i, full in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
}
_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """A daily cheap-tariff window in local minutes after midnight (end may be before start)."""

    start_min: int
    end_min: int
    current_a: float

    def contains(self, minute: float) -> bool:
        """Whether ``minute`` (local minutes after midnight) is inside the window."""
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    @property
    def label(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSettings:
    """The validated options (see the module docstring; defaults here)."""

    departure_min: int = 7 * 60
    energy_wh: float = 20_000.0
    #: Weekdays with a departure (0 = Monday).
    days: frozenset[int] = frozenset(range(7))
    #: None: the machine's local zone.
    zone: ZoneInfo | None = None
    #: None: the device maximum.
    plan_current_a: float | None = None
    margin_s: float = 30 * 60.0
    pv: PvSettings = field(default_factory=PvSettings)
    windows: tuple[Window, ...] = ()

    def local(self, wall_s: float) -> datetime:
        """Unix time -> naive local date and time in the configured zone."""
        if self.zone is None:
            return datetime.fromtimestamp(wall_s)
        return datetime.fromtimestamp(wall_s, self.zone).replace(tzinfo=None)

    def unix(self, local: datetime) -> float:
        """Naive local date and time -> Unix time (a time skipped by DST maps to just after the gap)."""
        if self.zone is None:
            return local.timestamp()
        return local.replace(tzinfo=self.zone).timestamp()

    def next_departure(self, wall_s: float) -> tuple[float, datetime] | None:
        """The first departure after ``wall_s``: (Unix time, local time), None if no day has one."""
        today = self.local(wall_s).date()
        hour, minute = divmod(self.departure_min, 60)
        for offset in range(8):
            day: date = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            local = datetime.combine(day, time_of_day(hour, minute))
            at = self.unix(local)
            if at > wall_s:
                return at, local
        return None


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_time(name: str, value: Any) -> int:
    """``"H:MM"`` or ``"HH:MM"`` -> minutes after midnight (an OptionError names ``name``).

    Only text: the config loader keeps an unquoted ``7:00`` the text "7:00" (no
    YAML 1.1 base-60 numbers), so a number here is a mistake such as ``700``.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        hint = _time_hint(value)
        fix = f'write it as "{hint}"' if hint else 'write a time like "07:00"'
        raise OptionError(name, f"{value!r} is not a time; {fix}")
    if not isinstance(value, str):
        raise OptionError(name, f'expected a time like "07:00", got {value!r}')
    match = _HHMM.match(value)
    if match is None:
        raise OptionError(name, f'{value!r} is not a time like "07:00"')
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise OptionError(name, f"{value!r} is not a time of day (00:00 to 23:59)")
    return hour * 60 + minute


def _time_hint(value: float) -> str | None:
    """What a number given as a time most likely meant: 7 -> 07:00, 700 -> 07:00, 2230 -> 22:30."""
    if not math.isfinite(value) or value != int(value):
        return None
    n = int(value)
    if 0 <= n <= 23:
        return _hhmm(n * 60)
    hour, minute = divmod(n, 100)
    if 0 <= hour <= 23 and minute <= 59:
        return _hhmm(hour * 60 + minute)
    return None


def _parse_days(value: Any) -> frozenset[int]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise OptionError("days", f"expected a list of days like [mon, tue], got {value!r}")
    if not value:
        raise OptionError("days", "an empty list has no departure; leave the option out for every day")
    days = set()
    for item in value:
        word = str(item).strip().lower()
        if word not in _DAY_WORDS:
            raise OptionError("days", f"unknown day {item!r}{did_you_mean(word, _DAY_WORDS)}; use mon..sun")
        days.add(_DAY_WORDS[word])
    return frozenset(days)


def _parse_zone(value: Any) -> ZoneInfo | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise OptionError("timezone", f"expected an IANA zone name like 'Europe/Berlin', got {value!r}")
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise OptionError(
            "timezone", f"unknown time zone {value!r} (IANA names like 'Europe/Berlin' or 'UTC')"
        ) from None


def _parse_windows(value: Any) -> tuple[Window, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise OptionError("windows", "expected a list of {start, end, current_a}")
    windows = []
    for i, item in enumerate(value):
        where = f"windows[{i}]"
        if not isinstance(item, Mapping):
            raise OptionError(where, "expected a mapping with start, end and current_a")
        try:
            check_known(item, WINDOW_OPTIONS)
            for key in WINDOW_OPTIONS:
                if key not in item:
                    raise OptionError(key, "missing")
            start, end = parse_time("start", item["start"]), parse_time("end", item["end"])
            current_a = number(item, "current_a", MIN_CURRENT_A, lo=MIN_CURRENT_A, hi=MAX_CURRENT_A, unit="A")
        except OptionError as exc:
            raise OptionError(f"{where}.{exc.option}", exc.message) from None
        if start == end:
            raise OptionError(where, f"start and end are both {_hhmm(start)}; a window needs a length")
        windows.append(Window(start_min=start, end_min=end, current_a=current_a))
    return tuple(windows)


def parse_schedule(options: Mapping[str, Any]) -> ScheduleSettings:
    """Validate the options of "schedule" (an OptionError names the bad one)."""
    check_known(options, OPTIONS)
    d = ScheduleSettings()
    pv_options = options.get("pv", {})
    if pv_options is None:
        pv_options = {}
    if not isinstance(pv_options, Mapping):
        raise OptionError("pv", f"expected a mapping of pv options, got {pv_options!r}")
    try:
        pv = parse_settings(pv_options, keep_minimum=False)
    except OptionError as exc:
        raise OptionError(f"pv.{exc.option}", exc.message) from None
    plan_current = options.get("plan_current_a")
    return ScheduleSettings(
        departure_min=parse_time("departure", options.get("departure", "07:00")),
        energy_wh=number(options, "energy_kwh", d.energy_wh / 1000, lo=0.1, hi=500, unit="kWh") * 1000,
        days=d.days if options.get("days") is None else _parse_days(options["days"]),
        zone=_parse_zone(options.get("timezone")),
        plan_current_a=None
        if plan_current is None
        else number(options, "plan_current_a", 0, lo=MIN_CURRENT_A, hi=MAX_CURRENT_A, unit="A"),
        margin_s=number(options, "margin_min", d.margin_s / 60, lo=0, hi=12 * 60, unit="min") * 60,
        pv=pv,
        windows=_parse_windows(options.get("windows") or ()),
    )
