"""config/surplus.service: the systemd unit starts what exists and gives shutdown its time."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path

from surplus.cli import build_parser
from surplus.control import ChargerControl

UNIT = Path(__file__).resolve().parents[1] / "config" / "surplus.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT_KEYS = parse_unit(UNIT.read_text())
SERVICE = UNIT_KEYS["Service"]


def test_the_unit_has_its_sections() -> None:
    assert set(UNIT_KEYS) == {"Unit", "Service", "Install"}
    assert UNIT_KEYS["Install"]["WantedBy"] == ["multi-user.target"]
    assert SERVICE["Type"] == ["simple"] and SERVICE["Restart"] == ["on-failure"]


def test_the_commands_are_real_surplus_commands() -> None:
    workdir = SERVICE["WorkingDirectory"][0]
    for key, command in (("ExecStartPre", "check-config"), ("ExecStart", "run")):
        argv = shlex.split(SERVICE[key][0])
        assert argv[0] == f"{workdir}/.venv/bin/surplus", argv  # what `make install` creates
        args = build_parser().parse_args(argv[1:])
        assert args.command == command
    run = build_parser().parse_args(shlex.split(SERVICE["ExecStart"][0])[1:])
    pre = build_parser().parse_args(shlex.split(SERVICE["ExecStartPre"][0])[1:])
    assert run.config == pre.file  # the file that is checked is the file that runs


def test_stopping_gives_the_safe_state_its_time() -> None:
    # SIGTERM makes the controller send each charger's safe state, waiting out a spacing
    # rule for at most max_wait_s; systemd must not SIGKILL it before that.
    max_wait_s = inspect.signature(ChargerControl.leave_safe).parameters["max_wait_s"].default
    assert SERVICE["KillSignal"] == ["SIGTERM"]
    assert float(SERVICE["TimeoutStopSec"][0]) >= max_wait_s + 10
    assert "dialout" in SERVICE["SupplementaryGroups"][0]  # the RS485 adapter's group
