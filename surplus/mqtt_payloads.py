"""What goes over MQTT, without the connection: commands in as JSON-RPC calls, state out as payloads.

A command on ``<prefix>/<charger id>/<what>/set`` becomes the JSON-RPC call that
does the same thing (:func:`command_call`); the state of each charger and meter
becomes topic -> payload (:func:`state_messages`). The connection, the
publishing and the replies are :mod:`surplus.mqtt_bridge`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .api import ControllerAPI
from .ha_discovery import MAX_STATE_CHARS, OFF, OFFLINE, ON, ONLINE, Topics
from .jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND
from .modbus import registers as R
from .rpc_health import charger_health, meter_status
from .types import current_text

#: What ``<prefix>/<charger>/<what>/set`` takes.
COMMANDS = ("mode", "current", "phases", "lock", "clear_override")
#: Longer command payloads are refused unread.
MAX_PAYLOAD_BYTES = 1024
#: Values that jitter by themselves are only sent again after moving this far (unit of the topic).
DEADBAND = {"temperature": 0.5}
_LOCK_WORDS = {
    "on": True,
    "true": True,
    "lock": True,
    "locked": True,
    "off": False,
    "false": False,
    "unlock": False,
    "unlocked": False,
}


class CommandError(Exception):
    """A payload that never becomes a call: a JSON-RPC error code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _value(text: str) -> Any:
    """The payload as JSON (a number, string, object, ...), or the text itself when it is not JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except Exception:  # not JSON, NaN/Infinity, nested too deep, a 5000-digit integer
        return text


def _unwrap(value: Any, key: str) -> Any:
    if isinstance(value, dict) and set(value) == {key}:
        return value[key]
    return value


def command_call(what: str, payload: bytes, charger_id: str) -> tuple[str, dict[str, Any]]:
    """The JSON-RPC method and parameters a command stands for.

    The payload is a plain value (``pv``, ``16``, ``ON``) or JSON (``"pv"``,
    ``{"current": 16, "until": 3600}``); its validation is the RPC method's own,
    so the error messages are the RPC's.

    :raises CommandError: for an unknown command or a payload that is no text.
    """
    if what not in COMMANDS:
        raise CommandError(METHOD_NOT_FOUND, f"unknown command {what!r}: one of {', '.join(COMMANDS)}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(
            INVALID_PARAMS, f"payload too long ({len(payload)} bytes, at most {MAX_PAYLOAD_BYTES})"
        )
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError(INVALID_PARAMS, "payload is not UTF-8 text") from None
    value = _value(text)
    params: dict[str, Any] = {"chargerId": charger_id}
    if what == "clear_override":
        return "clearOverride", params
    if what == "mode":
        return "setMode", params | {"mode": _unwrap(value, "mode")}
    if what == "current":
        if isinstance(value, dict):
            if "current" not in value or not set(value) <= {"current", "until"}:
                raise CommandError(
                    INVALID_PARAMS,
                    'current/set takes a number of amperes or {"current": A, "until": seconds or ISO time}',
                )
            return "setOverride", params | value
        return "setOverride", params | {"current": value}
    if what == "phases":
        return "setOverride", params | {"phases": _unwrap(value, "phases")}
    value = _unwrap(value, "lock")
    if isinstance(value, str) and value.lower() in _LOCK_WORDS:
        value = _LOCK_WORDS[value.lower()]
    return "setLock", params | {"lock": value}


def _num(value: float, digits: int) -> str | None:
    if not math.isfinite(value):
        return None
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"


def setpoint_text(value: float) -> str | None:
    """A setpoint as it was set (:func:`~surplus.types.current_text`); None when not a number."""
    return current_text(value) if math.isfinite(value) else None


def _flag(value: bool) -> str:
    return ON if value else OFF


def _text(value: str) -> str:
    one = " ".join(value.split())
    return one if len(one) <= MAX_STATE_CHARS else one[: MAX_STATE_CHARS - 3] + "..."


def charger_values(controller: ControllerAPI, charger_id: str, *, fresh: bool, status: str) -> dict[str, str]:
    """Sub-topic -> payload for one charger (values of a charger never read are left out)."""
    published = controller.published()
    view = published.charger(charger_id)
    reading = published.snapshot.chargers.get(charger_id)
    out: dict[str, str | None] = {
        "available": ONLINE if fresh else OFFLINE,
        "status": status,
        "mode": view.mode,
    }
    override = view.override
    out["override"] = (
        "none"
        if override is None
        else json.dumps(
            {
                k: v
                for k, v in (
                    ("charge", override.charge),
                    ("current", override.current_a),
                    ("phases", override.phases),
                    ("lock", override.lock),
                )
                if v is not None
            },
            separators=(",", ":"),
        )
    )
    record = view.decision
    if record is not None:
        why = [r for r in (record.decision.reason, *record.verdict.reasons) if r]
        out["reason"] = _text("; ".join(why) or "-")
        out["verdict"] = record.verdict.outcome.value
    state = reading.state if reading is not None else None
    if state is not None:
        out |= {
            "evse_state": R.EVSE_STATE.text(state.evse_state),
            "cp_state": R.CP_STATE.text(state.cp_state),
            "car_connected": _flag(state.vehicle_connected),
            "charging": _flag(state.charging),
            "setpoint": setpoint_text(state.current_limit_a),
            "current_l1": _num(state.current_l1_a, 1),
            "current_l2": _num(state.current_l2_a, 1),
            "current_l3": _num(state.current_l3_a, 1),
            "power": _num(state.power_total_w, 0),
            "temperature": _num(state.temperature_c, 1),
            "session_energy": _num(state.session_energy_wh / 1000, 3),
            "energy_total": _num(state.energy_total_wh / 1000, 3),
            "phases": str(state.active_phases),
            "lock": _flag(state.locked),
        }
    return {k: v for k, v in out.items() if v is not None}


def within_deadband(topic: str, last: str | None, payload: str) -> bool:
    """A jittering value that moved less than its deadband since ``last`` was sent is not sent again."""
    band = DEADBAND.get(topic.rpartition("/")[2])
    if band is None or last is None:
        return False
    try:
        return abs(float(payload) - float(last)) < band
    except ValueError:
        return False


def state_messages(
    controller: ControllerAPI, topics: Topics, *, now: float, stale_after_s: float
) -> dict[str, str]:
    """Topic -> payload of every state value now."""
    t = topics
    snap = controller.published().snapshot
    _worst, health = charger_health(controller, stale_after_s)
    out: dict[str, str] = {}
    for cid in controller.charger_ids:
        reading = snap.chargers.get(cid)
        age = None if reading is None else reading.age_s + max(0.0, now - snap.at_s)
        fresh = reading is not None and reading.state is not None and age is not None and age <= stale_after_s
        values = charger_values(controller, cid, fresh=fresh, status=health[cid]["status"])
        out |= {t.charger(cid, k): v for k, v in values.items()}
    for mid, m in snap.meters.items():
        status = meter_status(m)
        out[t.meter(mid, "health")] = _text(status)
        out[t.meter(mid, "available")] = ONLINE if status == "ok" else OFFLINE
        power = _num(m.grid_power_w, 0)
        if power is not None:
            out[t.meter(mid, "power")] = power
    return out
