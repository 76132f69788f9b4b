"""Test data built from real surplus types, shared by the test modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from surplus.types import Capabilities, ChargerConfig, ChargerState, DeviceInfo


def charger_state(charger_id: str = "wb1", read_at_s: float = 1000.0, **changes: Any) -> ChargerState:
    """A charging AMTRON with the numbers of the Node README's examples."""
    state = ChargerState(
        charger_id=charger_id,
        read_at_s=read_at_s,
        info=DeviceInfo(
            layout_version=0x0103,
            firmware_version="2.0",
            serial_number="ABC123456",
            article_number="1234567",
            device_id=50,
        ),
        config=ChargerConfig(
            downgrade_current_a=16.0,
            max_current_house_a=32.0,
            max_current_evse_a=32.0,
            phase_switching_mode=2,
            phase_options_hw=2,
            cable_lock_setting=False,
            master_lost_fallback_current_a=1,  # set up as the README says
            grid_imbalance=False,
            grid_imbalance_threshold_a=16,
            grid_phases_connected=2,
            authorization_enabled=False,
            solar_min_current_a=6,
            phase_switching_pause_s=30,
        ),
        capabilities=Capabilities(
            phase_switching=True,
            max_current_a=32.0,
            grid_phases=3,
            exact_6a_rejected=False,
            phase_switch_pause_s=30.0,
        ),
        evse_state=5,
        cp_state=28,
        authorization_status=1,
        downgrade_status=1,
        phase_rotation=0,
        signaled_current_a=16.0,
        current_limit_a=16.0,
        current_l1_a=15.2,
        current_l2_a=15.1,
        current_l3_a=15.3,
        voltage_l1_v=230.5,
        voltage_l2_v=231.0,
        voltage_l3_v=229.8,
        power_l1_w=3502.6,
        power_l2_w=3488.1,
        power_l3_w=3511.9,
        power_total_w=10502.6,
        temperature_c=42.5,
        session_max_current_a=16.0,
        session_energy_wh=5234.0,
        session_duration_s=1823,
        detected_phases=3,
        energy_total_wh=1234567.0,
        sessions_total=156,
        cable_lock_status=1,
        solar_charging_mode=0,
        requested_phases=0,
        charging_release=True,
        locked=False,
        error_code=0,
        master_lost_fallback=False,
        switched_phases=0,
    )
    return replace(state, **changes)
