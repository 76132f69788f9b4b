"""The charger contract the control loop uses."""

from __future__ import annotations

from typing import Protocol

from ..types import ChargerState, Command


class ChargerError(Exception):
    """A charger could not be read or written; the message is one line for people."""


class Charger(Protocol):
    """A wallbox the loop can read and command."""

    charger_id: str

    async def start(self) -> None:
        """Connect: identify the device, read its configuration, start its heartbeat."""
        ...

    async def read_state(self, *, full: bool = False) -> ChargerState:
        """Read the device. ``full`` also re-reads configuration blocks."""
        ...

    async def execute(self, command: Command) -> None:
        """Write what the governor approved, in the order the device needs."""
        ...

    async def stop(self) -> None:
        """Stop the heartbeat and release the device (call after the safe-state command)."""
        ...
