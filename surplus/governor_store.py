"""The governor's memory on disk, so its rules hold across restarts and kill -9.

What was sent to each charger and when (:class:`~surplus.governor.GovernorMemory`)
is written after every write to a charger, atomically (a temporary file in the
same directory, flushed to disk, then renamed over the old one), so a crash
leaves the old file or the new one, never half of one. Times are stored as Unix
time and turned back into the clock's monotonic seconds on load, so the 5 s
spacing, the 5-minute pause->resume rule and the phase-switch interval count on
from where the previous process left off.

A missing, unreadable or foreign file starts with an empty memory and says so
in the log; it never stops the controller.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .clock import Clock
from .governor import GovernorMemory

log = logging.getLogger(__name__)

FORMAT = "surplus-governor-1"
_TIMES = tuple(f.name for f in dataclasses.fields(GovernorMemory) if f.name.endswith("_at_s"))
_FIELDS = {f.name for f in dataclasses.fields(GovernorMemory)}


class GovernorStore:
    """Loads and saves the governor's memory of every charger in one JSON file."""

    def __init__(self, path: str | Path, clock: Clock) -> None:
        self.path = Path(path)
        self._clock = clock
        self._failing = False

    def _offset_s(self) -> float:
        """Unix time minus the clock's monotonic time, now."""
        return self._clock.wall() - self._clock.now()

    def load(self) -> dict[str, GovernorMemory]:
        """The memories saved by an earlier process (empty when there is no usable file)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("governor state %s unreadable (%s); starting with no memory", self.path, exc)
            return {}
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT
            or not isinstance(raw.get("chargers"), dict)
        ):
            log.warning("governor state %s is not surplus's; starting with no memory", self.path)
            return {}
        offset = self._offset_s()
        memories: dict[str, GovernorMemory] = {}
        for charger_id, fields in raw["chargers"].items():
            try:
                memories[str(charger_id)] = _memory_from(fields, offset)
            except (TypeError, ValueError) as exc:
                log.warning(
                    "governor state %s: charger %s unreadable (%s); ignored", self.path, charger_id, exc
                )
        if memories:
            log.info("governor state restored from %s (%s)", self.path, ", ".join(sorted(memories)))
        return memories

    def save(self, memories: Mapping[str, GovernorMemory]) -> None:
        """Write every memory atomically; a failure is logged once per streak, never raised."""
        offset = self._offset_s()
        doc = {
            "format": FORMAT,
            "saved_at": self._clock.wall(),
            "chargers": {cid: _memory_to(m, offset) for cid, m in memories.items()},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(doc, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if not self._failing:
                log.error(
                    "governor state %s cannot be written (%s); its rules hold until a restart only",
                    self.path,
                    exc,
                )
            self._failing = True
            return
        if self._failing:
            log.info("governor state %s is written again", self.path)
        self._failing = False


def _memory_to(memory: GovernorMemory, offset_s: float) -> dict[str, Any]:
    out = dataclasses.asdict(memory)
    for name in _TIMES:
        if out[name] is not None:
            out[name] = out[name] + offset_s
    return out


def _memory_from(fields: Any, offset_s: float) -> GovernorMemory:
    if not isinstance(fields, dict):
        raise TypeError("not an object")
    known = {k: v for k, v in fields.items() if k in _FIELDS}
    for name in _TIMES:
        value = known.get(name)
        if value is not None:
            if not isinstance(value, (int, float)):
                raise ValueError(f"{name} is not a number")
            known[name] = float(value) - offset_s
    return GovernorMemory(**known)
