"""What the JSON-RPC layer, /metrics and MQTT may ask of a running controller.

:class:`surplus.loop.Controller` implements it. Reads come from the latest
published :class:`~surplus.state.LoopState` (never a bus transaction); writes
become overrides that pass through the safety governor and return its
:class:`~surplus.types.Verdict`. ``Override`` and ``DecisionRecord`` live in
:mod:`surplus.state` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import Clock
from .state import DecisionRecord, LoopState, Override
from .types import MeterReading, Snapshot, Verdict

__all__ = [
    "ChargerSetup",
    "ControllerAPI",
    "DecisionRecord",
    "Line",
    "LineStatus",
    "Override",
    "PluginInfo",
    "SessionHistory",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginInfo:
    name: str
    source: str  # "built-in" or the distribution that provides it
    provides: tuple[str, ...]  # e.g. ("strategy:fixed", "meter:simulated")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerSetup:
    """Where a charger sits: its circuits (its own first, then up the tree) and its sharing priority."""

    charger_id: str
    circuits: tuple[str, ...] = ()
    priority: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LineStatus:
    """One RS485 line (or gateway) as ``health`` shows it."""

    connected: bool
    #: The share of the last minute the line spent in transactions (0..1).
    load: float
    #: How often each box's measurements are read (s; the line's poll plan in effect).
    poll_interval_s: float | None = None
    #: How many boxes poll on the line.
    boxes: int = 0
    #: Why the line cannot keep every box's data within the stated age (None: it can).
    problem: str | None = None

    @classmethod
    def of(cls, line: Line) -> LineStatus:
        """The status of ``line`` now."""
        polls = line.polls
        return cls(
            connected=line.connected,
            load=line.load(),
            poll_interval_s=polls.interval_s,
            boxes=polls.boxes,
            problem=polls.problem,
        )


class PollView(Protocol):
    """A line's poll plan as ``health`` shows it (:class:`surplus.modbus.polls.PollPlan`)."""

    @property
    def interval_s(self) -> float: ...

    @property
    def boxes(self) -> int: ...

    @property
    def problem(self) -> str | None: ...


class Line(Protocol):
    """What the controller asks of a line for ``health`` (a :class:`surplus.modbus.bus.ModbusBus`)."""

    @property
    def connected(self) -> bool: ...

    def load(self) -> float: ...

    @property
    def polls(self) -> PollView: ...


class SessionHistory(Protocol):
    """What ``getSessions`` reads: :class:`surplus.history.History` is one."""

    async def sessions(self, *, charger_id: str | None = None, limit: int = 20) -> Sequence[Any]:
        """The newest ``limit`` sessions (records), newest first."""
        ...


class ControllerAPI(Protocol):
    """The controller as the RPC server and metrics see it."""

    clock: Clock
    #: ``clock.now()`` at start-up (for uptime).
    started_at_s: float

    def published(self) -> LoopState:
        """The latest published state: snapshot, and per charger its mode, override and last
        decision, each with its time. Readers (RPC, metrics, MQTT, history) read this."""
        ...

    @property
    def charger_ids(self) -> Sequence[str]:
        """Configured chargers; the first is the default for Node-compatible methods."""
        ...

    def lines(self) -> Mapping[str, LineStatus]:
        """Each line by its config id: connected, and how full it is."""
        ...

    def charger_setup(self, charger_id: str) -> ChargerSetup:
        """The charger's circuits and priority (raises ValueError for an unknown charger)."""
        ...

    @property
    def available_modes(self) -> Sequence[str]:
        """The modes a charger can be set to: one per loaded strategy plugin, built-in or not."""
        ...

    @property
    def modes_reading_meter(self) -> frozenset[str]:
        """The modes that read the grid meter (their plugins say ``uses_meter``/``needs_meter``)."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (ages inside are relative to its ``at_s``)."""
        ...

    def get_mode(self, charger_id: str) -> str: ...

    def set_mode(self, charger_id: str, mode: str) -> None:
        """Switch the charger's strategy and drop its override (the mode decides from now on).

        Raise ``ValueError`` (one line for people) for an unknown mode or charger."""
        ...

    async def set_override(self, charger_id: str, override: Override) -> Verdict:
        """Merge ``override`` into the charger's override, run the governor now,
        send what it allows, and return its verdict. The override then holds on
        every tick until cleared or expired."""
        ...

    def clear_override(self, charger_id: str) -> bool:
        """Drop the override; the strategy resumes on the next tick. True if there was one."""
        ...

    def get_override(self, charger_id: str) -> Override | None: ...

    def last_decision(self, charger_id: str) -> DecisionRecord | None: ...

    def meters(self) -> Mapping[str, MeterReading]: ...

    def plugins(self) -> Sequence[PluginInfo]: ...
