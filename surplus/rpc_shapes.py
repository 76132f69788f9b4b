"""JSON shapes of the RPC replies: pure functions of surplus's own types.

The Node server's ``data`` shapes for a :class:`~surplus.types.ChargerState`
(getStatus, getPower, ...), and the controller's types as JSON. JSON has no
NaN or Infinity: every float goes through :func:`rounded`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .modbus import registers as R
from .session_record import SessionRecord
from .state import DecisionRecord, Override
from .types import ChargerState, Command, Decision, MeterReading, ReadGroup, Verdict


def iso_utc(wall_s: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds and ``Z`` (like JavaScript's ``toISOString``)."""
    ms = round(wall_s * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def rounded(value: float | None, digits: int = 3) -> float | None:
    """Round a reading for people; None or a non-finite value (garbled, never read) becomes null.

    JSON has no NaN or Infinity: every float a reply carries goes through here.
    """
    return round(value, digits) if value is not None and math.isfinite(value) else None


# -- shapes (pure functions of a ChargerState) ------------------------------------------------


def device_info(s: ChargerState) -> dict[str, Any]:
    """``getDeviceInfo`` data."""
    return {
        "modbusVersion": s.info.layout_text,
        "firmwareVersion": s.info.firmware_version,
        "serialNumber": s.info.serial_number,
        "maxCurrentEVSE": rounded(s.config.max_current_evse_a),
        "maxCurrentHouse": rounded(s.config.max_current_house_a),
        "articleNumber": s.info.article_number,
    }


def status(s: ChargerState) -> dict[str, Any]:
    """``getStatus`` data."""
    return {
        "evseState": s.evse_state,
        "evseStateText": R.EVSE_STATE.text(s.evse_state),
        "cpState": s.cp_state,
        "cpStateText": R.CP_STATE.text(s.cp_state),
        "authorizationStatus": s.authorization_status,
        "authorizationText": R.AUTHORIZATION_STATUS.text(s.authorization_status),
        "downgrade": s.downgrade_status,
        "downgradeText": R.DOWNGRADE_STATUS.text(s.downgrade_status),
        "phaseRotation": s.phase_rotation,
        "signaledCurrent": rounded(s.signaled_current_a),
        "currentLimit": rounded(s.current_limit_a),
        "chargingRelease": s.charging_release,
        "locked": s.locked,
        "activePhases": s.active_phases,
    }


def voltage(s: ChargerState) -> dict[str, Any]:
    """``getVoltage`` data."""
    return {
        "l1": rounded(s.voltage_l1_v),
        "l2": rounded(s.voltage_l2_v),
        "l3": rounded(s.voltage_l3_v),
        "unit": "V",
    }


def current(s: ChargerState) -> dict[str, Any]:
    """``getCurrent`` data."""
    return {
        "l1": rounded(s.current_l1_a),
        "l2": rounded(s.current_l2_a),
        "l3": rounded(s.current_l3_a),
        "unit": "A",
    }


def power(s: ChargerState) -> dict[str, Any]:
    """``getPower`` data."""
    return {
        "l1": rounded(s.power_l1_w, 1),
        "l2": rounded(s.power_l2_w, 1),
        "l3": rounded(s.power_l3_w, 1),
        "total": rounded(s.power_total_w, 1),
        "unit": "W",
    }


def energy(s: ChargerState) -> dict[str, Any]:
    """``getEnergy`` data (kWh, like the Node server)."""
    return {
        "session": rounded(s.session_energy_wh / 1000),
        "total": rounded(s.energy_total_wh / 1000),
        "unit": "kWh",
    }


def format_duration(seconds: int) -> str:
    """``1823`` -> ``"0h 30m 23s"`` (the Node server's format)."""
    return f"{seconds // 3600}h {seconds % 3600 // 60}m {seconds % 60}s"


def session(s: ChargerState) -> dict[str, Any]:
    """``getSessionData`` data."""
    return {
        "maxCurrent": rounded(s.session_max_current_a),
        "chargedEnergy": rounded(s.session_energy_wh / 1000),
        "duration": s.session_duration_s,
        "durationFormatted": format_duration(s.session_duration_s),
        "detectedPhases": s.detected_phases,
        "unit": {"current": "A", "energy": "kWh", "duration": "s"},
    }


def statistics(s: ChargerState) -> dict[str, Any]:
    """``getStatistics`` data."""
    return {
        "totalEnergy": rounded(s.energy_total_wh / 1000),
        "totalSessions": s.sessions_total,
        "unit": {"energy": "kWh"},
    }


def diagnostics(s: ChargerState) -> dict[str, Any]:
    """``getDiagnostics`` data."""
    return {
        "activeErrorCode": s.error_code,
        "activeErrorText": R.ACTIVE_ERROR_CODE.text(s.error_code),
        "hasError": s.error_code != 0,
        "masterLostFallback": s.master_lost_fallback,
        "switchedPhases": s.switched_phases,
        "temperature": rounded(s.temperature_c, 1),
    }


def configuration(s: ChargerState) -> dict[str, Any]:
    """``getConfiguration`` data."""
    c = s.config
    return {
        "maxCurrentHouse": rounded(c.max_current_house_a),
        "maxCurrentEvse": rounded(c.max_current_evse_a),
        "phaseSwitchingMode": c.phase_switching_mode,
        "phaseOptionsHw": c.phase_options_hw,
        "cableLock": c.cable_lock_setting,
        "masterLostFallbackCurrent": c.master_lost_fallback_current_a,
        "gridImbalance": c.grid_imbalance,
        "gridPhasesConnected": c.grid_phases_connected,
        "authorization": c.authorization_enabled,
        "phaseSwitching": s.capabilities.phase_switching,
    }


_M, _C, _K = ReadGroup.MEASUREMENTS, ReadGroup.CONTROL, ReadGroup.CONFIGURATION
#: Which read groups each shape's values come from: its reply says each one's age.
SHAPE_GROUPS: dict[Any, tuple[ReadGroup, ...]] = {
    device_info: (_K,),
    status: (_M, _C),
    voltage: (_M,),
    current: (_M,),
    power: (_M,),
    energy: (_C,),
    session: (_C,),
    statistics: (_C,),
    diagnostics: (_M, _C),
    configuration: (_K,),
}


def all_data(s: ChargerState, timestamp: str) -> dict[str, Any]:
    """``getAllData`` data (the Node server has it, though its README does not list it)."""
    return {
        "deviceInfo": device_info(s),
        "status": status(s),
        "measurements": {"voltage": voltage(s), "current": current(s), "power": power(s)},
        "energy": energy(s),
        "session": session(s),
        "diagnostics": diagnostics(s),
        "configuration": configuration(s),
        "timestamp": timestamp,
    }


def command_json(cmd: Command | None) -> dict[str, Any] | None:
    """A governor command as JSON (None fields: left alone)."""
    if cmd is None:
        return None
    return {"current": rounded(cmd.current_a), "release": cmd.release, "phases": cmd.phases, "lock": cmd.lock}


def meter_json(m: MeterReading) -> dict[str, Any]:
    """A meter reading as JSON: a value the meter never gave (NaN: never read) is null; ``error`` says why."""
    return {
        "gridPowerW": rounded(m.grid_power_w, 1),
        "pvPowerW": rounded(m.pv_power_w, 1),
        "housePowerW": rounded(m.house_power_w, 1),
        "batteryPowerW": rounded(m.battery_power_w, 1),
        "batterySocPct": rounded(m.battery_soc_pct, 1),
        "ageSeconds": rounded(m.age_s),
        "error": m.error,
    }


def decision_json(d: Decision) -> dict[str, Any]:
    """A decision as JSON."""
    return {
        "source": d.source.value,
        "charge": d.charge,
        "current": rounded(d.current_a),
        "phases": d.phases,
        "lock": d.lock,
        "pauseKind": None if d.pause_kind is None else d.pause_kind.value,
        "reason": d.reason,
        # The strategy's own numbers behind it (pv: surplus_watts, surplus_noise_watts, ...).
        "figures": dict(d.figures),
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
        # The car took nothing for 5 minutes though offered 6 A or more (null: it never drew).
        "carFull": r.car_full,
        "updated": iso_utc(r.updated_at),
    }


def override_json(ov: Override | None, wall_at: Callable[[float], str]) -> dict[str, Any] | None:
    """A person's override; ``wall_at`` turns a clock time into an ISO wall time."""
    if ov is None:
        return None
    return {
        "charge": ov.charge,
        "current": rounded(ov.current_a),
        "phases": ov.phases,
        "lock": ov.lock,
        "pauseKind": None if ov.pause_kind is None else ov.pause_kind.value,
        "until": None if ov.until_s is None else wall_at(ov.until_s),
        "reason": ov.reason,
    }


def verdict_json(v: Verdict, wall_at: Callable[[float], str]) -> dict[str, Any]:
    return {
        "outcome": v.outcome.value,
        "command": command_json(v.command),
        "reasons": list(v.reasons),
        "retryAt": None if v.retry_at_s is None else wall_at(v.retry_at_s),
    }


def record_json(rec: DecisionRecord, wall_at: Callable[[float], str]) -> dict[str, Any]:
    """``getDecision``'s data: the decision, the governor's verdict and the inputs."""
    return {
        "at": wall_at(rec.at_s),
        "strategy": rec.strategy,
        "mode": rec.mode,
        "decision": decision_json(rec.decision),
        "verdict": verdict_json(rec.verdict, wall_at),
        "inputs": {
            "gridPowerW": rounded(rec.grid_power_w, 1),
            "chargerAgeSeconds": rounded(rec.charger_age_s),
            "override": override_json(rec.override, wall_at),
        },
        "reasons": [r for r in (rec.decision.reason, *rec.verdict.reasons) if r],
    }
