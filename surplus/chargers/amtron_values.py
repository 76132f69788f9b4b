"""What the AMTRON's registers mean, without I/O.

Register values (as :func:`surplus.modbus.codec.decode_words` gives them) become
the frozen :class:`ChargerConfig`, :class:`Capabilities` and :class:`ChargerState`;
a :class:`Command` the governor approved becomes the register writes in the order
the box needs. The driver (:mod:`surplus.chargers.amtron`) does the bus side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from ..modbus import registers as R
from ..modbus.codec import Value, WordOrder, decode_span, encode
from ..modbus.registers import Register
from ..types import (
    ERROR_EM_UNAVAILABLE,
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    SOFT_PAUSE_MAX_A,
    SOFT_PAUSE_MIN_A,
    Capabilities,
    ChargerConfig,
    ChargerState,
    Command,
    DeviceInfo,
    EvseState,
    ReadGroup,
)

log = logging.getLogger("surplus.chargers.amtron")

#: Highest layout with the "exactly 6 A is rejected" firmware bug.
LAST_LAYOUT_REJECTING_6A = 0x0102
#: What those layouts get instead of 6.0 A.
SIX_AMP_WORKAROUND_A = 6.01
#: Plausible mains voltage when a phase is live (0 is also fine: some units read 0 when idle).
VOLTAGE_PLAUSIBLE_V = (180.0, 260.0)

#: One register write: what the log shows, the register, its words.
Step = tuple[str, Register, list[int]]


def word_order_warning(words: list[int], word_order: WordOrder) -> str | None:
    """What is wrong with VOLTAGE_L1 read as ``words`` in ``word_order`` (None: it looks right)."""
    other: WordOrder = "little" if word_order == "big" else "big"
    ours = float(decode_span([R.VOLTAGE_L1], R.VOLTAGE_L1.address, words, word_order)["VOLTAGE_L1"])
    theirs = float(decode_span([R.VOLTAGE_L1], R.VOLTAGE_L1.address, words, other)["VOLTAGE_L1"])
    if not plausible_voltage(ours) and plausible_voltage(theirs):
        return (
            f"VOLTAGE_L1 reads {ours:.4g} V with word_order={word_order} but {theirs:.1f} V with "
            f"word_order={other}; the word order looks swapped, set word_order={other}"
        )
    if not plausible_voltage(ours):
        low, high = VOLTAGE_PLAUSIBLE_V
        return f"VOLTAGE_L1 reads {ours:.4g} V, outside {low:g}-{high:g} V; check the wiring and word order"
    return None


def current_problem(current: float) -> str | None:
    """Why ``current`` may not be written to CHARGING_CURRENT_EM (None: it may)."""
    ok = math.isfinite(current) and (
        SOFT_PAUSE_MIN_A <= current <= SOFT_PAUSE_MAX_A or MIN_CURRENT_A <= current <= MAX_CURRENT_A
    )
    if ok:
        return None
    return (
        f"refusing current {current!r} A "
        f"(allowed: soft pause {SOFT_PAUSE_MIN_A}-{SOFT_PAUSE_MAX_A} or {MIN_CURRENT_A:g}-{MAX_CURRENT_A:g})"
    )


def in_error(evse_state: int, error_code: int) -> bool:
    """The box waits for the recovery order (EVSE error, or the energy manager lost)."""
    return evse_state == EvseState.ERROR or error_code == ERROR_EM_UNAVAILABLE


def write_steps(command: Command, caps: Capabilities, word_order: WordOrder, *, error: bool) -> list[Step]:
    """The writes of a validated ``command``, in the order the AMTRON needs.

    Pausing: release off before anything else. Starting: phases, then the
    current, then release on. In error state (``error``) the documented
    recovery order: heartbeat, release, current.
    """
    current = command.current_a
    if current is not None and caps.exact_6a_rejected and MIN_CURRENT_A <= current < SIX_AMP_WORKAROUND_A:
        current = SIX_AMP_WORKAROUND_A
    current_step: Step | None = None
    if current is not None:
        current_step = (
            f"{current:g} A",
            R.CHARGING_CURRENT_EM,
            encode(R.CHARGING_CURRENT_EM, current, word_order),
        )
    release_step: Step | None = None
    if command.release is not None:
        release_step = (str(int(command.release)), R.CHARGING_RELEASE_EM, [int(command.release)])
    phases_step: Step | None = None
    if command.phases is not None:
        phases_step = (f"{command.phases}p", R.REQUESTED_PHASES, [1 if command.phases == 1 else 0])
    lock_step: Step | None = None
    if command.lock is not None:
        lock_step = (str(int(command.lock)), R.LOCK_EVSE, [int(command.lock)])

    if error:
        heartbeat: Step = ("heartbeat", R.HEARTBEAT_EM, [R.HEARTBEAT_VALUE])
        order = [heartbeat, release_step, current_step, phases_step, lock_step]
    else:
        locking = lock_step if command.lock else None
        unlocking = lock_step if command.lock is False else None
        pausing = release_step if command.release is False else None
        releasing = release_step if command.release else None
        order = [locking, pausing, phases_step, current_step, releasing, unlocking]
    return [step for step in order if step is not None]


def plausible_voltage(volts: float) -> bool:
    low, high = VOLTAGE_PLAUSIBLE_V
    return volts == 0.0 or low <= volts <= high


def _f(values: Mapping[str, Value], reg: Register, default: float = 0.0) -> float:
    value = values.get(reg.name, default)
    if type(value) is float:  # the common case first: this runs ~30 times a tick
        return value
    return float(value) if isinstance(value, (int, float)) else default


def _i(values: Mapping[str, Value], reg: Register, default: int = 0) -> int:
    value = values.get(reg.name, default)
    if type(value) is int:
        return value
    return int(value) if isinstance(value, (int, float)) else default


def config_from(v: Mapping[str, Value]) -> ChargerConfig:
    return ChargerConfig(
        downgrade_current_a=_f(v, R.DOWNGRADE_CURRENT),
        max_current_house_a=_f(v, R.MAX_CURRENT_HOUSE),
        max_current_evse_a=_f(v, R.MAX_CURRENT_EVSE),
        phase_switching_mode=_i(v, R.PHASE_SWITCHING_MODE),
        # Layout 1.0.0 lacks PHASE_OPTIONS_HW: assume the 3-phase-only hardware.
        phase_options_hw=_i(v, R.PHASE_OPTIONS_HW, 1),
        cable_lock_setting=bool(_i(v, R.CABLE_LOCK_SETTING)),
        master_lost_fallback_current_a=_i(v, R.MASTER_LOST_FALLBACK_CURRENT),
        grid_imbalance=bool(_i(v, R.GRID_IMBALANCE)),
        grid_imbalance_threshold_a=_i(v, R.GRID_IMBALANCE_THRESHOLD),
        # Before layout 1.0.2 the register is missing; 2 (three phases) is the common wiring.
        grid_phases_connected=_i(v, R.GRID_PHASES_CONNECTED, 2),
        authorization_enabled=bool(_i(v, R.AUTHORIZATION_ENABLED)),
        solar_min_current_a=_i(v, R.SOLAR_MIN_CURRENT),
        phase_switching_pause_s=_i(v, R.PHASE_SWITCHING_PAUSE),
    )


def capabilities_from(config: ChargerConfig, layout: int, charger_id: str) -> Capabilities:
    max_current = config.max_current_evse_a
    if not MIN_CURRENT_A <= max_current <= MAX_CURRENT_A:
        log.warning(
            "%s: MAX_CURRENT_EVSE reads %.4g A; assuming %g A", charger_id, max_current, MAX_CURRENT_A
        )
        max_current = MAX_CURRENT_A
    return Capabilities(
        phase_switching=config.phase_options_hw == 2,
        max_current_a=max_current,
        grid_phases=1 if config.grid_phases_connected == 0 else 3,
        exact_6a_rejected=layout <= LAST_LAYOUT_REJECTING_6A,
        phase_switch_pause_s=float(config.phase_switching_pause_s),
    )


def state_from(
    v: Mapping[str, Value],
    *,
    charger_id: str,
    read_at_s: float,
    info: DeviceInfo,
    config: ChargerConfig,
    caps: Capabilities,
    groups: Mapping[ReadGroup, float],
) -> ChargerState:
    # Registers the layout lacks read as 0; energies arrive in kWh.
    return ChargerState(
        charger_id=charger_id,
        read_at_s=read_at_s,
        read_at_by_group=groups,
        info=info,
        config=config,
        capabilities=caps,
        evse_state=_i(v, R.EVSE_STATE),
        cp_state=_i(v, R.CP_STATE),
        authorization_status=_i(v, R.AUTHORIZATION_STATUS),
        downgrade_status=_i(v, R.DOWNGRADE_STATUS),
        phase_rotation=_i(v, R.PHASE_ROTATION_STATUS),
        signaled_current_a=_f(v, R.SIGNALED_CURRENT),
        current_limit_a=_f(v, R.CHARGING_CURRENT_EM),
        current_l1_a=_f(v, R.CURRENT_L1),
        current_l2_a=_f(v, R.CURRENT_L2),
        current_l3_a=_f(v, R.CURRENT_L3),
        voltage_l1_v=_f(v, R.VOLTAGE_L1),
        voltage_l2_v=_f(v, R.VOLTAGE_L2),
        voltage_l3_v=_f(v, R.VOLTAGE_L3),
        power_l1_w=_f(v, R.POWER_L1),
        power_l2_w=_f(v, R.POWER_L2),
        power_l3_w=_f(v, R.POWER_L3),
        power_total_w=_f(v, R.POWER_OVERALL),
        temperature_c=_f(v, R.TEMPERATURE),
        session_max_current_a=_f(v, R.SESSION_MAX_CURRENT),
        session_energy_wh=_f(v, R.CHARGED_ENERGY_SESSION) * 1000.0,
        session_duration_s=_i(v, R.SESSION_DURATION),
        detected_phases=_i(v, R.DETECTED_EV_PHASES),
        energy_total_wh=_f(v, R.CHARGED_ENERGY_TOTAL) * 1000.0,
        sessions_total=_i(v, R.CHARGING_SESSIONS_TOTAL),
        cable_lock_status=_i(v, R.CABLE_LOCK_STATUS),
        solar_charging_mode=_i(v, R.SOLAR_CHARGING_MODE),
        requested_phases=_i(v, R.REQUESTED_PHASES),
        charging_release=bool(_i(v, R.CHARGING_RELEASE_EM)),
        locked=bool(_i(v, R.LOCK_EVSE)),
        error_code=_i(v, R.ACTIVE_ERROR_CODE),
        master_lost_fallback=bool(_i(v, R.MASTER_LOST_FALLBACK_STATE)),
        switched_phases=_i(v, R.SWITCHED_PHASES),
    )
