"""What ``surplus probe`` found, and how it says so: the boxes, the warnings, the hints, the report.

:mod:`surplus.probe` reads the bus and fills a :class:`ProbeResult`; this module
turns it into the text (:func:`format_report`) and the ``--json`` output. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .types import ERROR_EM_UNAVAILABLE, MAX_CURRENT_A, MIN_CURRENT_A

EXIT_FOUND = 0
EXIT_NOTHING = 2
EXIT_PORT = 3

DEFAULT_BAUDRATE = 57600
#: Per-request timeout when one id is asked (twice).
TIMEOUT_S = 1.0

HINTS_NO_ANSWER = (
    "A/B swapped? Swap the two data wires (A/B, also printed D+/D- or T+/T-; makers disagree "
    "on the naming) and probe again.",
    "Satellite mode: on the box's DIP switch bank S1, switches 4 and 5 must be ON and switch 7 OFF; "
    "without it the box does not answer on Modbus.",
    "Restart the wallbox after any DIP switch change (breaker off and on): it reads the switches "
    "only when it starts.",
    "Termination: 120 ohm across A and B at both ends of the line (many USB adapters have a jumper "
    "or switch for it); an unterminated or long line garbles replies.",
)


def fallback_meaning(value: int | None) -> tuple[str, bool | None]:
    """What 0x030E's value means, and whether the box keeps charging when surplus goes silent."""
    if value is None:
        return "not reported (register layout before 1.0.2)", None
    if value == 0:
        return "0 = keep charging with the last current and release", True
    if value == 1:
        return "1 = pause charging", False
    if MIN_CURRENT_A <= value <= MAX_CURRENT_A:
        return f"{value} = go on charging at {value} A", True
    return f"{value} = not a documented value", None


@dataclass(frozen=True, slots=True, kw_only=True)
class BoxReport:
    """What one AMTRON said (None: not read, or not in its register layout)."""

    device_id: int
    baudrate: int
    frame: str
    layout_version: int
    layout: str
    firmware_version: str | None = None
    serial_number: str | None = None
    article_number: str | None = None
    evse_state: int | None = None
    evse_state_text: str | None = None
    error_code: int | None = None
    error_text: str | None = None
    max_current_evse_a: float | None = None
    max_current_house_a: float | None = None
    phase_options_hw: int | None = None
    phase_options_text: str | None = None
    phase_switching: bool | None = None
    phase_switching_mode_text: str | None = None
    grid_phases: int | None = None
    fallback_current_a: int | None = None
    fallback_text: str = ""
    fallback_keeps_charging: bool | None = None
    fallback_active: bool | None = None
    voltage_l1_v: float | None = None
    word_order: str = "big"
    #: Reads that failed after the box had answered.
    problems: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class ProbeResult:
    """Everything the probe tried and found; :meth:`as_json` is the ``--json`` output."""

    port: str
    frame: str
    device_ids: tuple[int, ...]
    baudrates_tried: list[int] = field(default_factory=list)
    timeout_s: float = TIMEOUT_S
    scanned: bool = False
    scanned_baudrates: bool = False
    boxes: list[BoxReport] = field(default_factory=list)
    #: Ids that answered, but with a Modbus exception instead of a layout version.
    other_replies: list[str] = field(default_factory=list)
    port_error: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.boxes)

    @property
    def exit_code(self) -> int:
        if self.boxes:
            return EXIT_FOUND
        return EXIT_PORT if self.port_error else EXIT_NOTHING

    def warnings(self) -> list[str]:
        out = []
        for box in self.boxes:
            if box.fallback_keeps_charging:
                at = (
                    "at the last current surplus set"
                    if box.fallback_current_a == 0
                    else f"at {box.fallback_current_a} A"
                )
                out.append(
                    f"device id {box.device_id}: if surplus stops (crash, the computer loses power, the "
                    f"adapter is unplugged) while the car charges, this box goes on charging {at}, from the "
                    "grid if need be, until the car is full or unplugged. Set the heartbeat-loss fallback to "
                    "1 (pause) or a current you can afford with the MENNEKES configuration tool; "
                    "surplus probe never writes settings."
                )
            if box.word_order != "big":
                out.append(
                    f"device id {box.device_id}: VOLTAGE_L1 only makes sense with word_order {box.word_order}; "
                    f"set bus.word_order: {box.word_order}"
                )
        return out

    def hints(self) -> list[str]:
        if self.boxes:
            return []
        if self.port_error:
            return [
                "Is the USB-RS485 adapter plugged in? `ls -l /dev/serial/by-id/` lists adapters by name.",
                "Permission denied? Add your user to the dialout group (sudo usermod -aG dialout $USER) "
                "and log in again.",
            ]
        out = list(HINTS_NO_ANSWER)
        if not self.scanned:
            ids = ", ".join(map(str, self.device_ids))
            out.append(
                f"Device id: nothing answered on {ids}. A satellite answers on 50 unless the configuration "
                "tool set another id (10-50): try --scan."
            )
        if not self.scanned_baudrates:
            rate = self.baudrates_tried[0] if self.baudrates_tried else DEFAULT_BAUDRATE
            out.append(
                f"Baud rate: tried {rate} {self.frame}. The box's default is 57600 8N2; the configuration "
                "tool offers 9600 to 56000 too: try --scan-baudrate."
            )
        if self.other_replies:
            out.append("Something answered with Modbus exceptions: another kind of device on this id?")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "found": self.found,
            "boxes": [asdict(b) for b in self.boxes],
            "tried": {
                "device_ids": list(self.device_ids),
                "baudrates": self.baudrates_tried,
                "frame": self.frame,
                "timeout_s": self.timeout_s,
            },
            "other_replies": self.other_replies,
            "port_error": self.port_error,
            "warnings": self.warnings(),
            "hints": self.hints(),
        }


def ids_text(ids: Sequence[int]) -> str:
    if len(ids) == 1:
        return f"id {ids[0]}"
    ordered = sorted(ids)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"ids {ordered[0]}-{ordered[-1]}"
    return "ids " + ", ".join(map(str, ids))


def unit_text(value: float | int | None, unit: str) -> str:
    return "?" if value is None else f"{value:g} {unit}"


def format_report(result: ProbeResult) -> list[str]:
    """Human-readable lines: each box with its values and units, then warnings, or the hints."""
    lines: list[str] = []
    if result.port_error:
        error = result.port_error
        lines.append(error if error.startswith(result.port) else f"{result.port}: {error}")
    elif not result.boxes:
        rates = ", ".join(map(str, result.baudrates_tried))
        lines.append(
            f"No AMTRON answered on {result.port} "
            f"(device {ids_text(result.device_ids)}, {rates} baud {result.frame})."
        )
    for r in result.other_replies:
        lines.append(f"Not an AMTRON answer: {r}")
    for box in result.boxes:
        lines.append(
            f"AMTRON found on {result.port}: device id {box.device_id}, {box.baudrate} baud {box.frame}"
        )

        def row(name: str, value: str) -> None:
            lines.append(f"  {name:<22}{value}")

        row("register layout", f"{box.layout} (0x{box.layout_version:04X})")
        row("firmware", box.firmware_version or "?")
        row("serial number", box.serial_number or "?")
        row("article number", box.article_number or "?")
        row("EVSE state", "?" if box.evse_state is None else f"{box.evse_state} ({box.evse_state_text})")
        if box.error_code:
            extra = ""
            if box.error_code == ERROR_EM_UNAVAILABLE:
                extra = "; normal while no energy manager runs, surplus run clears it"
            row("error", f"{box.error_code} ({box.error_text}{extra})")
        row("maximum current", f"{unit_text(box.max_current_evse_a, 'A')} (MAX_CURRENT_EVSE)")
        row("house connection", f"{unit_text(box.max_current_house_a, 'A')} (MAX_CURRENT_HOUSE)")
        options = "?"
        if box.phase_options_text is not None:
            options = box.phase_options_text + (
                ": phase switching possible" if box.phase_switching else ": no phase switching"
            )
        row("phases (hardware)", options)
        if box.phase_switching_mode_text is not None:
            row("phase usage (solar)", box.phase_switching_mode_text)
        row("grid phases", "?" if box.grid_phases is None else str(box.grid_phases))
        if box.voltage_l1_v is not None:
            row("voltage L1", f"{box.voltage_l1_v:g} V (word order {box.word_order})")
        row("heartbeat fallback", f"{box.fallback_text} (0x030E)")
        if box.fallback_active:
            row("", "fallback active now: no energy manager heartbeat")
        for problem in box.problems:
            row("problem", problem)
    for warning in result.warnings():
        lines.append(f"WARNING: {warning}")
    hints = result.hints()
    if hints:
        lines.append("What to check:")
        lines.extend(f"  - {h}" for h in hints)
    elif result.boxes:
        lines.append(f"Next: surplus init --port {result.port} -o surplus.yaml")
    return lines
