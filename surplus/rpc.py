"""The JSON-RPC method table: Node-compatible getters and setters plus controller methods.

Every method the server answers is one :class:`~surplus.jsonrpc.MethodSpec`
row in :func:`build_methods`. Replies use the Node server's envelope
``{"success": true, "data": ..., "timestamp": "...Z"}`` with the same ``data``
shapes; snapshot reads add ``ageSeconds`` and ``chargerId`` next to ``data``.

Policy decisions (see the README's API section):

- Reads come from ``controller.published()`` (one frozen state). A charger that was never read,
  or whose data is older than ``stale_after_s``, gives error -32000
  ("charger data unavailable" / "charger data stale (age N s)") instead of old
  numbers. ``health`` always answers and reports the staleness; its ``status``
  is the chargers' alone, ``meters`` and ``degraded`` tell about the meters.
- Writes become overrides (``controller.set_override``); the governor's
  verdict decides the reply: applied / scheduled / unchanged are
  ``success: true`` with ``data.status``; refused is error -32000
  "refused: <reason>" with the reasons in ``error.data``.
- Parameter errors are -32602 with a message saying what is valid (the Node
  server used -32000 for these).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import rpc_schema as S
from .api import ControllerAPI, SessionHistory
from .jsonrpc import MethodSpec, Param
from .rpc_methods import CHARGER_PARAM, DEFAULT_SESSIONS, MAX_SESSIONS, Methods, current_param
from .rpc_shapes import (
    configuration,
    current,
    device_info,
    diagnostics,
    energy,
    power,
    session,
    statistics,
    status,
    voltage,
)
from .types import PauseKind


def build_methods(
    controller: ControllerAPI, *, stale_after_s: float = 30.0, history: SessionHistory | None = None
) -> list[MethodSpec]:
    """The method table for ``controller``: what the server dispatches and ``rpc.discover`` describes.

    ``history``: the session history ``getSessions`` reads (None: it answers "history is off")."""
    m = Methods(controller, stale_after_s=stale_after_s, history=history)
    ch = (CHARGER_PARAM,)
    modes = tuple(controller.available_modes)

    def read(name: str, doc: str, shape: Any, data: Mapping[str, Any]) -> MethodSpec:
        return MethodSpec(name=name, doc=doc, handler=m.read(shape), params=ch, result=S.envelope(data))

    def write(name: str, doc: str, handler: Any, params: tuple[Param, ...] = ()) -> MethodSpec:
        return MethodSpec(
            name=name,
            doc=doc,
            handler=handler,
            params=(*params, CHARGER_PARAM),
            write=True,
            result=S.envelope(S.WRITE),
        )

    any_obj: dict[str, Any] = {"type": ["object", "null"]}
    methods = [
        MethodSpec(name="ping", doc="Ping; answers pong.", handler=m.ping, result=S.envelope(message=True)),
        MethodSpec(
            name="health",
            doc=(
                "Server health: status healthy/stale/error/disconnected (the chargers), Modbus connection, "
                "uptime; meters ok/stale/error, and degraded when a mode lacks the meter it needs."
            ),
            handler=m.health,
            result=S.envelope(
                S.obj(
                    status=S.STR,
                    modbusConnected=S.BOOL,
                    uptime=S.NUM,
                    timestamp=S.STR,
                    meters={"type": "object", "additionalProperties": S.STR},
                    degraded=S.BOOL,
                    degradedReasons={"type": "array", "items": S.STR},
                )
            ),
        ),
        read(
            "getDeviceInfo",
            "Firmware, serial number, Modbus layout version, current limits.",
            device_info,
            S.DEVICE_INFO,
        ),
        read(
            "getStatus",
            "EVSE state, CP state, authorization, downgrade, signalled current.",
            status,
            S.STATUS,
        ),
        read("getVoltage", "Voltage per phase (V).", voltage, S.PHASES3),
        read("getCurrent", "Current per phase (A).", current, S.PHASES3),
        read("getPower", "Power per phase and total (W).", power, S.POWER),
        MethodSpec(
            name="getChargingPower",
            doc="Total charging power in kW (data is a number).",
            handler=m.charging_power,
            params=ch,
            result=S.envelope(S.NUM),
        ),
        MethodSpec(
            name="getTemperature",
            doc="EVSE internal temperature in °C (data is a number).",
            handler=m.temperature,
            params=ch,
            result=S.envelope(S.NUM),
        ),
        read("getEnergy", "Session and total energy (kWh).", energy, S.ENERGY),
        read("getSessionData", "Current session: max current, energy, duration, phases.", session, S.SESSION),
        read("getStatistics", "Lifetime energy and session count.", statistics, S.STATISTICS),
        write(
            "setChargingCurrent",
            "Charge at this current (override through the safety governor).",
            m.set_charging_current,
            (current_param("ampere", "Charging current in A.", required=True),),
        ),
        write(
            "startCharging",
            "Start charging at this current (default 6 A).",
            m.start_charging,
            (current_param("current", "Charging current in A (default 6).", required=False),),
        ),
        write("stopCharging", "Stop charging: charging release off.", m.stop_charging),
        write("pauseCharging", "Pause charging without releasing (soft pause).", m.pause_charging),
        write(
            "resumeCharging",
            "Resume charging at this current (default 6 A).",
            m.resume_charging,
            (current_param("current", "Charging current in A (default 6).", required=False),),
        ),
        write(
            "setRequestedPhases",
            "Request all phases (0) or a single phase (1); needs phase-switching hardware.",
            m.set_requested_phases,
            (
                Param(
                    name="phases",
                    kind="integer",
                    doc="0 = all phases, 1 = single phase.",
                    required=True,
                    choices=(0, 1),
                ),
            ),
        ),
        write(
            "setLock",
            "Lock (true) or unlock (false) the EVSE.",
            m.set_lock,
            (Param(name="lock", kind="boolean", doc="true locks, false unlocks.", required=True),),
        ),
        read(
            "getDiagnostics",
            "Active error code, fallback state, switched phases, temperature.",
            diagnostics,
            S.DIAGNOSTICS,
        ),
        read("getConfiguration", "Installer configuration of the charger.", configuration, S.CONFIGURATION),
        MethodSpec(
            name="getAllData",
            doc="Everything the getters return, in one reply.",
            handler=m.all_data,
            params=ch,
            result=S.envelope({"type": "object"}),
        ),
        MethodSpec(
            name="getMode",
            doc="The charger's mode and the modes there are.",
            handler=m.get_mode,
            params=ch,
            result=S.envelope(S.obj(chargerId=S.STR, mode=S.STR, modes={"type": "array"})),
        ),
        MethodSpec(
            name="setMode",
            doc=f"Set the charger's mode ({', '.join(modes)}: one per loaded strategy plugin).",
            handler=m.set_mode,
            params=(
                Param(name="mode", kind="string", doc="The mode.", required=True, choices=modes),
                CHARGER_PARAM,
            ),
            write=True,
            result=S.envelope(S.obj(chargerId=S.STR, mode=S.STR)),
        ),
        MethodSpec(
            name="setOverride",
            doc="Override the strategy (merged into the present override) until cleared or until `until`.",
            handler=m.set_override,
            params=(
                current_param("current", "Charging current in A.", required=False),
                Param(name="phases", kind="integer", doc="1 or 3 phases.", choices=(1, 3)),
                Param(name="charge", kind="boolean", doc="true charges, false pauses."),
                Param(name="lock", kind="boolean", doc="true locks, false unlocks the EVSE."),
                Param(
                    name="pauseKind",
                    kind="string",
                    doc="How to pause: soft (0 A signalled) or release (relays open).",
                    choices=tuple(k.value for k in PauseKind),
                ),
                Param(name="until", kind="time", doc="Expiry: ISO 8601 time or seconds from now."),
                CHARGER_PARAM,
            ),
            write=True,
            result=S.envelope(S.WRITE),
        ),
        MethodSpec(
            name="clearOverride",
            doc="Drop the override; the strategy resumes on the next tick.",
            handler=m.clear_override,
            params=ch,
            write=True,
            result=S.envelope(S.obj(chargerId=S.STR, cleared=S.BOOL)),
        ),
        MethodSpec(
            name="getDecision",
            doc=(
                "The last decision: what was asked, the governor's verdict, its inputs and reasons "
                "(before the first one: decision null and the reason why)."
            ),
            handler=m.get_decision,
            params=ch,
            result=S.envelope(any_obj),
        ),
        MethodSpec(
            name="getChargers",
            doc="Every configured charger: its circuits (its own first, then up the tree), sharing "
            "priority, mode and health status. The Node-server methods address the first of them by default.",
            handler=m.get_chargers,
            result=S.envelope(
                {
                    "type": "array",
                    "items": S.obj(
                        chargerId=S.STR,
                        mode=S.STR,
                        priority=S.INT,
                        circuits={"type": "array", "items": S.STR},
                        status=S.STR,
                        ageSeconds=S.NUM,
                    ),
                }
            ),
        ),
        MethodSpec(
            name="getMeters",
            doc="The latest grid-meter readings by meter id (null: no value; error says why).",
            handler=m.get_meters,
            result=S.envelope({"type": "object"}),
        ),
        MethodSpec(
            name="listPlugins",
            doc="Loaded plugins and what they provide.",
            handler=m.list_plugins,
            result=S.envelope({"type": "array"}),
        ),
    ]
    # Always listed; without history.path it answers -32000 "history is off".
    methods.append(
        MethodSpec(
            name="getSessions",
            doc=(
                "Past and open charging sessions, newest first: times, energy, sun energy, modes "
                "(needs history.path)."
            ),
            handler=m.get_sessions,
            params=(
                Param(
                    name="chargerId",
                    kind="string",
                    doc="Only this charger's sessions (default: every charger's).",
                ),
                Param(
                    name="limit",
                    kind="integer",
                    doc=f"At most this many sessions (default {DEFAULT_SESSIONS}).",
                    minimum=1,
                    maximum=MAX_SESSIONS,
                ),
            ),
            result=S.envelope({"type": "array", "items": S.SESSION_ROW}),
        )
    )
    return methods
