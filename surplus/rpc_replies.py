"""The words of the JSON-RPC write replies: per outcome, what the Node server says (and what we add)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .types import Verdict


@dataclass(frozen=True, slots=True)
class Says:
    """A write reply's message per outcome; ``{a}`` is the current the charger gets, ``{at}`` when."""

    applied: str
    scheduled: str
    unchanged: str


# The applied texts are the Node server's messages.
SET_CURRENT = Says(
    "Charging current set to {a}",
    "Charging current change to {a} scheduled for {at}",
    "Charging current unchanged: stays at {a}",
)
START = Says(
    "Charging started with {a}", "Charging start with {a} scheduled for {at}", "Charging already on at {a}"
)
RESUME = Says(
    "Charging resumed with {a}", "Charging resume with {a} scheduled for {at}", "Charging already on at {a}"
)
STOP = Says("Charging stopped", "Charging stop scheduled for {at}", "Charging already stopped")
PAUSE = Says("Charging paused", "Charging pause scheduled for {at}", "Charging already paused")
LOCK = Says("EVSE locked", "EVSE lock scheduled for {at}", "EVSE already locked")
UNLOCK = Says("EVSE unlocked", "EVSE unlock scheduled for {at}", "EVSE already unlocked")
OVERRIDE = Says(
    "Override set", "Override set; the charger follows at {at}", "Override set; the charger already does this"
)


def amps_text(amps: float) -> str:
    """``16.0`` -> ``"16A"`` (the Node server's style), ``7.25`` -> ``"7.25A"``."""
    return f"{round(amps, 2):g}A"


def charge_current(requested: float | None, verdict: Verdict) -> tuple[float | None, str | None]:
    """The current a charge request really gets, and the clamp note if the governor lowered it.

    The command's current when one is sent; otherwise the clamped value, or the
    request itself (unchanged: the charger already holds it, within the
    governor's tolerance).
    """
    amps, note = requested, None
    if verdict.clamp is not None:
        asked, allowed, why = verdict.clamp
        note = f"{asked:g} A clamped to {allowed:g} A: {why}"
        amps = allowed
    cmd = verdict.command
    if requested is not None and cmd is not None and cmd.current_a is not None:
        amps = cmd.current_a
    if amps is not None and not math.isfinite(amps):
        amps = None
    return amps, note
