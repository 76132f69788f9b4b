"""The grid-meter contract.

A meter plugin registers a :data:`MeterFactory` under a type name (``type:`` in
a config's ``meters`` list). Constructing a meter validates its options and does
no I/O, so ``surplus check-config`` can build one without touching a network;
``start`` connects, ``read`` returns one reading, ``stop`` releases everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .clock import Clock
from .types import MeterReading


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterEnv:
    """What the controller hands every meter."""

    clock: Clock
    #: Total power the configured chargers draw now (W). Real meters measure it
    #: themselves; the simulated meter needs it to compute grid power.
    charger_power_w: Callable[[], float] | None = None


class Meter(Protocol):
    """A source of grid power readings (positive = import)."""

    meter_id: str
    #: Optional (default False): True for a meter whose ``read`` does no I/O and
    #: never waits (a simulated one); the loop then reads it in place, without a task.
    #: instant: bool

    async def start(self) -> None:
        """Connect (may be called again after a failure)."""
        ...

    async def read(self) -> MeterReading:
        """One reading; raise an exception with a one-line message when it fails."""
        ...

    async def stop(self) -> None:
        """Release connections; must be safe to call twice."""
        ...


#: ``(meter_id, options, env) -> meter``. Raise :class:`surplus.options.OptionError`
#: (a ``ValueError``) naming the bad option; do no I/O.
MeterFactory = Callable[[str, Mapping[str, Any], MeterEnv], Meter]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterInfo:
    """What a meter type says about itself when it registers (``register(type, factory, ...)``)."""

    name: str
    #: The plugin that registered it.
    plugin: str = ""
    #: One line for ``surplus plugins``.
    summary: str = ""
    #: Its options and their defaults (None: required or no default).
    options: Mapping[str, Any] = field(default_factory=dict)
