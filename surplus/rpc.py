"""The JSON-RPC method table: Node-compatible getters and setters plus controller methods.

Every method the server answers is one :class:`~surplus.jsonrpc.MethodSpec`
row in :func:`build_methods`. Replies use the Node server's envelope
``{"success": true, "data": ..., "timestamp": "...Z"}`` with the same ``data``
shapes; snapshot reads add ``ageSeconds`` and ``chargerId`` next to ``data``.

Policy decisions (see the README's API section):

- Reads come from ``controller.snapshot()``. A charger that was never read,
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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import rpc_schema as S
from .api import ControllerAPI, DecisionRecord, Override
from .history import SessionRecord
from .jsonrpc import SERVER_ERROR, Handler, MethodSpec, Param, RpcError, invalid_params
from .rpc_health import charger_health, meter_health
from .rpc_shapes import (
    SHAPE_GROUPS,
    all_data,
    command_json,
    configuration,
    current,
    decision_json,
    device_info,
    diagnostics,
    energy,
    iso_utc,
    meter_json,
    power,
    rounded,
    session,
    statistics,
    status,
    voltage,
)
from .types import (
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    ChargerState,
    Outcome,
    PauseKind,
    ReadGroup,
    Verdict,
)

#: Longest an override may be set to hold with ``until`` (a typo should not pin a charger for years).
MAX_OVERRIDE_S = 7 * 24 * 3600.0
#: ``getSessions`` without ``limit`` returns this many; at most MAX_SESSIONS.
DEFAULT_SESSIONS = 20
MAX_SESSIONS = 1000


# -- parameters -------------------------------------------------------------------------------

_CHARGER = Param(name="chargerId", kind="string", doc="Charger id (default: the first configured charger).")


def _current(name: str, doc: str, *, required: bool) -> Param:
    return Param(
        name=name, kind="number", doc=doc, required=required, minimum=MIN_CURRENT_A, maximum=MAX_CURRENT_A
    )


# -- write replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Says:
    """A write reply's message per outcome; ``{a}`` is the current the charger gets, ``{at}`` when."""

    applied: str
    scheduled: str
    unchanged: str


# The applied texts are the Node server's messages.
_SET_CURRENT = _Says(
    "Charging current set to {a}",
    "Charging current change to {a} scheduled for {at}",
    "Charging current unchanged: stays at {a}",
)
_START = _Says(
    "Charging started with {a}", "Charging start with {a} scheduled for {at}", "Charging already on at {a}"
)
_RESUME = _Says(
    "Charging resumed with {a}", "Charging resume with {a} scheduled for {at}", "Charging already on at {a}"
)
_STOP = _Says("Charging stopped", "Charging stop scheduled for {at}", "Charging already stopped")
_PAUSE = _Says("Charging paused", "Charging pause scheduled for {at}", "Charging already paused")
_LOCK = _Says("EVSE locked", "EVSE lock scheduled for {at}", "EVSE already locked")
_UNLOCK = _Says("EVSE unlocked", "EVSE unlock scheduled for {at}", "EVSE already unlocked")
_OVERRIDE = _Says(
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


# -- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fresh:
    charger_id: str
    state: ChargerState
    age_s: float


class _Methods:
    """Handlers bound to one controller."""

    def __init__(self, controller: ControllerAPI, *, stale_after_s: float) -> None:
        self.c = controller
        self.stale_after_s = stale_after_s

    # helpers

    def now_iso(self) -> str:
        return iso_utc(self.c.clock.wall())

    def wall_at(self, at_s: float) -> str:
        """A controller clock time (``Clock.now()``) as an ISO wall time."""
        return iso_utc(self.c.clock.wall() + (at_s - self.c.clock.now()))

    def charger(self, args: Mapping[str, Any]) -> str:
        ids = self.c.charger_ids
        cid = args.get("chargerId")
        if cid is None:
            if not ids:
                raise RpcError(SERVER_ERROR, "no charger is configured")
            return ids[0]
        if cid not in ids:
            raise invalid_params(f"chargerId must be one of {', '.join(ids)}")
        return str(cid)

    def fresh(self, args: Mapping[str, Any]) -> _Fresh:
        cid = self.charger(args)
        snap = self.c.snapshot()
        reading = snap.chargers.get(cid)
        if reading is None or reading.state is None:
            raise RpcError(
                SERVER_ERROR,
                f"charger data unavailable (charger {cid} has not been read yet)",
                {"chargerId": cid, "ageSeconds": None, "maxAgeSeconds": self.stale_after_s},
            )
        age = reading.age_s + max(0.0, self.c.clock.now() - snap.at_s)
        if not age <= self.stale_after_s:
            shown = round(age, 1) if math.isfinite(age) else None
            raise RpcError(
                SERVER_ERROR,
                f"charger data stale (age {age:.1f} s, limit {self.stale_after_s:g} s)",
                {"chargerId": cid, "ageSeconds": shown, "maxAgeSeconds": self.stale_after_s},
            )
        return _Fresh(cid, reading.state, age)

    def reply(
        self, data: Any, fresh: _Fresh | None = None, groups: tuple[ReadGroup, ...] = ()
    ) -> dict[str, Any]:
        """The envelope; a charger's data says how old it is: ``ageSeconds`` is the age of the
        oldest value in ``data``, ``readAgesSeconds`` the age of each read group it combines."""
        out = {"success": True, "data": data, "timestamp": self.now_iso()}
        if fresh is not None:
            st = fresh.state
            ages = {g.value: fresh.age_s + st.read_at_s - st.read_at(g) for g in groups}
            out["ageSeconds"] = rounded(max([fresh.age_s, *ages.values()]))
            out["readAgesSeconds"] = {g: rounded(a) for g, a in ages.items()}
            out["chargerId"] = fresh.charger_id
        return out

    def read(self, shape: Any) -> Handler:
        groups = SHAPE_GROUPS[shape]

        def handler(args: dict[str, Any]) -> dict[str, Any]:
            f = self.fresh(args)
            return self.reply(shape(f.state), f, groups)

        return handler

    # Node: health and scalar reads

    def ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"success": True, "message": "pong", "timestamp": self.now_iso()}

    def health(self, _args: dict[str, Any]) -> dict[str, Any]:
        now = self.c.clock.now()
        worst, chargers = charger_health(self.c, self.stale_after_s)
        first = chargers.get(self.c.charger_ids[0]) if self.c.charger_ids else None
        meters, degraded = meter_health(self.c)
        data = {
            "status": worst,
            "modbusConnected": bool(first and first["modbusConnected"]),
            "uptime": rounded(now - self.c.started_at_s),
            "timestamp": self.now_iso(),
            "maxAgeSeconds": rounded(self.stale_after_s),
            "chargers": chargers,
            "meters": meters,
            "degraded": bool(degraded),
            "degradedReasons": degraded,
            "lines": {
                lid: {
                    "connected": line.connected,
                    "load": rounded(line.load, 4),
                    "pollIntervalSeconds": rounded(line.poll_interval_s),
                    "boxes": line.boxes,
                }
                for lid, line in self.c.lines().items()
            },
        }
        return self.reply(data)

    def charging_power(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(rounded(f.state.power_total_w / 1000), f, (ReadGroup.MEASUREMENTS,))

    def temperature(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(rounded(f.state.temperature_c, 1), f, (ReadGroup.CONTROL,))

    def all_data(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(all_data(f.state, self.now_iso()), f, tuple(ReadGroup))

    # Node: writes, as overrides through the governor

    async def apply(
        self, cid: str, override: Override, says: _Says, *, current: bool = False
    ) -> dict[str, Any]:
        """Set the override and reply with what the governor really does with it.

        With ``current`` the reply names the current the charger gets (clamped
        to the ceiling, or the present one when nothing changes), never just the
        one asked for.
        """
        verdict = await self.c.set_override(cid, override)
        reasons = list(verdict.reasons)
        if verdict.outcome is Outcome.REFUSED:
            raise RpcError(
                SERVER_ERROR,
                f"refused: {reasons[0] if reasons else 'not allowed by the safety governor'}",
                {"status": "refused", "reasons": reasons, "chargerId": cid},
            )
        amps, clamp = charge_current(override.current_a, verdict)
        at = "later" if verdict.retry_at_s is None else self.wall_at(verdict.retry_at_s)
        template = {
            Outcome.APPLIED: says.applied,
            Outcome.SCHEDULED: says.scheduled,
            Outcome.UNCHANGED: says.unchanged,
        }[verdict.outcome]
        message = template.format(a="?" if amps is None else amps_text(amps), at=at)
        if verdict.outcome is Outcome.APPLIED and verdict.retry_at_s is not None:
            message += f"; the rest follows at {at}"
        if clamp is not None:
            message += f" ({clamp})"
        wants_charge = override.charge is True or (override.charge is None and override.current_a is not None)
        reading = self.c.snapshot().chargers.get(cid)
        lock = (
            override.lock
            if override.lock is not None
            else (reading.state.locked if reading and reading.state else False)
        )
        if wants_charge and lock:
            note = "the EVSE is locked: the car cannot charge until setLock lock=false"
            reasons.append(note)
            message += f"; {note}"
        data: dict[str, Any] = {
            "status": verdict.outcome.value,
            "message": message,
            "reasons": reasons,
            "override": self.override_json(self.c.get_override(cid) or override),
            "command": command_json(verdict.command),
        }
        if current:
            data["current"] = None if amps is None else rounded(amps, 2)
        if verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s is not None:
            data["scheduledAt"] = self.wall_at(verdict.retry_at_s)
        return self.reply(data)

    async def charge_at(self, args: dict[str, Any], amps: float, method: str, says: _Says) -> dict[str, Any]:
        ov = Override(charge=True, current_a=float(amps), reason=f"rpc {method}")
        return await self.apply(self.charger(args), ov, says, current=True)

    async def set_charging_current(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args["ampere"], "setChargingCurrent", _SET_CURRENT)

    async def start_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "startCharging", _START)

    async def resume_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "resumeCharging", _RESUME)

    async def stop_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.RELEASE, reason="rpc stopCharging")
        return await self.apply(self.charger(args), ov, _STOP)

    async def pause_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.SOFT, reason="rpc pauseCharging")
        return await self.apply(self.charger(args), ov, _PAUSE)

    async def set_requested_phases(self, args: dict[str, Any]) -> dict[str, Any]:
        single = args["phases"] == 1
        ov = Override(phases=1 if single else 3, reason="rpc setRequestedPhases")
        which = "single" if single else "all"
        says = _Says(
            f"Requested phases set to {which}",
            f"Requested phases change to {which} scheduled for {{at}}",
            f"Requested phases already {which}",
        )
        return await self.apply(self.charger(args), ov, says)

    async def set_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        lock = args["lock"]
        ov = Override(lock=lock, reason="rpc setLock")
        return await self.apply(self.charger(args), ov, _LOCK if lock else _UNLOCK)

    # controller methods

    def get_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply(
            {"chargerId": cid, "mode": self.c.get_mode(cid), "modes": list(self.c.available_modes)}
        )

    def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        try:
            self.c.set_mode(cid, args["mode"])
        except ValueError as exc:
            # The controller's ValueError is a one-line message meant for people.
            raise invalid_params(str(exc).splitlines()[0] if str(exc) else "mode not accepted") from None
        return self.reply({"chargerId": cid, "mode": self.c.get_mode(cid)})

    def until_s(self, value: Any) -> float:
        clock = self.c.clock
        if isinstance(value, str):
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                raise invalid_params("until must be an ISO 8601 time (e.g. 2024-01-10T12:00:00Z)") from None
            if at.tzinfo is None:
                raise invalid_params("until must include a timezone (e.g. 2024-01-10T12:00:00Z)")
            delta = at.timestamp() - clock.wall()
        else:
            delta = float(value)
        if not 0 < delta <= MAX_OVERRIDE_S:
            raise invalid_params(
                f"until must be in the future and at most {MAX_OVERRIDE_S / 86400:g} days ahead"
            )
        return clock.now() + delta

    async def set_override(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        if not args.keys() & {"current", "phases", "charge", "lock"}:
            raise invalid_params("setOverride needs at least one of current, phases, charge, lock")
        kind = args.get("pauseKind")
        ov = Override(
            charge=args.get("charge"),
            current_a=float(args["current"]) if "current" in args else None,
            phases=args.get("phases"),
            lock=args.get("lock"),
            pause_kind=PauseKind(kind) if kind is not None else None,
            until_s=self.until_s(args["until"]) if "until" in args else None,
            reason="rpc setOverride",
        )
        return await self.apply(cid, ov, _OVERRIDE)

    def clear_override(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply({"chargerId": cid, "cleared": self.c.clear_override(cid)})

    def get_decision(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        record = self.c.last_decision(cid)
        if record is None:  # nothing decided yet: say why rather than answer an empty reply
            reading = self.c.snapshot().chargers.get(cid)
            why = (
                reading.error
                if reading is not None and reading.error
                else "the charger has not been read yet"
            )
            return self.reply({"chargerId": cid, "decision": None, "reasons": [f"no decision yet: {why}"]})
        return self.reply(self.decision_json(record))

    def get_chargers(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Every configured charger: where it sits, its mode, its health."""
        _worst, health = charger_health(self.c, self.stale_after_s)
        out = []
        for cid in self.c.charger_ids:
            setup = self.c.charger_setup(cid)
            out.append(
                {
                    "chargerId": cid,
                    "mode": self.c.get_mode(cid),
                    "priority": setup.priority,
                    "circuits": list(setup.circuits),
                    "status": health[cid]["status"],
                    "ageSeconds": health[cid]["ageSeconds"],
                }
            )
        return self.reply(out)

    def get_meters(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.reply({mid: meter_json(m) for mid, m in self.c.meters().items()})

    async def get_sessions(self, args: dict[str, Any]) -> dict[str, Any]:
        history = self.c.history
        if history is None:
            raise RpcError(SERVER_ERROR, "history is off: set history.path in the config")
        cid = self.charger(args) if "chargerId" in args else None
        records = await history.sessions(charger_id=cid, limit=args.get("limit", DEFAULT_SESSIONS))
        now = self.c.clock.wall()
        return self.reply([session_json(r, now) for r in records])

    def list_plugins(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.reply(
            [{"name": p.name, "source": p.source, "provides": list(p.provides)} for p in self.c.plugins()]
        )

    # JSON shapes of controller objects

    def override_json(self, ov: Override | None) -> dict[str, Any] | None:
        if ov is None:
            return None
        return {
            "charge": ov.charge,
            "current": rounded(ov.current_a),
            "phases": ov.phases,
            "lock": ov.lock,
            "pauseKind": None if ov.pause_kind is None else ov.pause_kind.value,
            "until": None if ov.until_s is None else self.wall_at(ov.until_s),
            "reason": ov.reason,
        }

    def verdict_json(self, v: Verdict) -> dict[str, Any]:
        return {
            "outcome": v.outcome.value,
            "command": command_json(v.command),
            "reasons": list(v.reasons),
            "retryAt": None if v.retry_at_s is None else self.wall_at(v.retry_at_s),
        }

    def decision_json(self, rec: DecisionRecord) -> dict[str, Any]:
        return {
            "at": self.wall_at(rec.at_s),
            "strategy": rec.strategy,
            "mode": rec.mode,
            "decision": decision_json(rec.decision),
            "verdict": self.verdict_json(rec.verdict),
            "inputs": {
                "gridPowerW": rounded(rec.grid_power_w, 1),
                "chargerAgeSeconds": rounded(rec.charger_age_s),
                "override": self.override_json(rec.override),
            },
            "reasons": [r for r in (rec.decision.reason, *rec.verdict.reasons) if r],
        }


def session_json(r: SessionRecord, now_wall: float) -> dict[str, Any]:
    """One ``getSessions`` entry: ISO times, energy in Wh (an open session runs until now)."""
    end = r.ended_at
    return {
        "id": r.id,
        "chargerId": r.charger_id,
        "start": iso_utc(r.started_at),
        "end": None if end is None else iso_utc(end),
        "open": end is None,
        "durationSeconds": rounded(max(0.0, (now_wall if end is None else end) - r.started_at), 0),
        "energyWh": rounded(r.energy_wh, 1),
        "sunEnergyWh": rounded(r.sun_wh, 1),
        "sunShare": rounded(r.sun_wh / r.energy_wh, 3) if r.energy_wh > 0 else None,
        "unmeteredEnergyWh": rounded(r.unmetered_wh, 1),
        "maxCurrent": rounded(r.max_current_a, 2),
        "phases": list(r.phases),
        "modes": list(r.modes),
        "endReason": r.end_reason,
        "updated": iso_utc(r.updated_at),
    }


def build_methods(controller: ControllerAPI, *, stale_after_s: float = 30.0) -> list[MethodSpec]:
    """The method table for ``controller``: what the server dispatches and ``rpc.discover`` describes."""
    m = _Methods(controller, stale_after_s=stale_after_s)
    ch = (_CHARGER,)
    modes = tuple(controller.available_modes)

    def read(name: str, doc: str, shape: Any, data: Mapping[str, Any]) -> MethodSpec:
        return MethodSpec(name=name, doc=doc, handler=m.read(shape), params=ch, result=S.envelope(data))

    def write(name: str, doc: str, handler: Any, params: tuple[Param, ...] = ()) -> MethodSpec:
        return MethodSpec(
            name=name,
            doc=doc,
            handler=handler,
            params=(*params, _CHARGER),
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
            (_current("ampere", "Charging current in A.", required=True),),
        ),
        write(
            "startCharging",
            "Start charging at this current (default 6 A).",
            m.start_charging,
            (_current("current", "Charging current in A (default 6).", required=False),),
        ),
        write("stopCharging", "Stop charging: charging release off.", m.stop_charging),
        write("pauseCharging", "Pause charging without releasing (soft pause).", m.pause_charging),
        write(
            "resumeCharging",
            "Resume charging at this current (default 6 A).",
            m.resume_charging,
            (_current("current", "Charging current in A (default 6).", required=False),),
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
                _CHARGER,
            ),
            write=True,
            result=S.envelope(S.obj(chargerId=S.STR, mode=S.STR)),
        ),
        MethodSpec(
            name="setOverride",
            doc="Override the strategy (merged into the present override) until cleared or until `until`.",
            handler=m.set_override,
            params=(
                _current("current", "Charging current in A.", required=False),
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
                _CHARGER,
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
