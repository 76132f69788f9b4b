"""The register map is data: validated, complete, and decoded through pymodbus."""

import math

import pytest

from surplus.modbus import codec
from surplus.modbus import registers as R


def test_every_block_of_the_specification_has_registers() -> None:
    blocks = {r.block for r in R.REGISTERS}
    assert blocks == set(R.Block)


def test_key_addresses_match_the_specification() -> None:
    assert R.HEARTBEAT_EM.address == 0x0D00
    assert R.CHARGING_CURRENT_EM.address == 0x0302 and R.CHARGING_CURRENT_EM.count == 2
    assert R.CHARGING_RELEASE_EM.address == 0x0D05
    assert R.REQUESTED_PHASES.address == 0x0D04
    assert R.PHASE_OPTIONS_HW.address == 0x030C
    assert R.POWER_OVERALL.address == 0x0512
    assert R.CHARGED_ENERGY_TOTAL.address == 0x1000
    assert R.SETTING_PHASE_SWITCHING_PAUSE.address == 0x078C


@pytest.mark.parametrize(
    ("regs", "message"),
    [
        ([R._r("A", 0, R.U16, "R"), R._r("A", 1, R.U16, "R")], "duplicate"),
        ([R._r("A", 0, R.F32, "R"), R._r("B", 1, R.U16, "R")], "overlaps"),
        ([R._r("A", 0, R.F32, "R", count=1)], "needs 2"),
        ([R._r("A", 0, R.STR, "R", count=0)], "at least one"),
        ([R._r("A", 0xFFFF, R.F32, "R")], "out of range"),
    ],
)
def test_validation_rejects_broken_tables(regs: list[R.Register], message: str) -> None:
    with pytest.raises(R.RegisterMapError, match=message):
        R.validate(regs)


def test_names_are_unique_and_index_matches() -> None:
    assert len(R.BY_NAME) == len(R.REGISTERS)
    assert R.BY_NAME["EVSE_STATE"] is R.EVSE_STATE


@pytest.mark.parametrize("order", ["big", "little"])
def test_codec_round_trips_every_type(order: codec.WordOrder) -> None:
    assert codec.decode(R.VOLTAGE_L1, codec.encode(R.VOLTAGE_L1, 230.5, order), order) == 230.5
    assert codec.decode(R.SESSION_DURATION, codec.encode(R.SESSION_DURATION, 70000, order), order) == 70000
    assert codec.decode(R.EVSE_STATE, codec.encode(R.EVSE_STATE, 5, order), order) == 5
    assert codec.decode(R.FIRMWARE_VERSION, codec.encode(R.FIRMWARE_VERSION, "5.22.3")) == "5.22.3"


def test_word_order_matters_for_floats() -> None:
    words = codec.encode(R.CHARGING_CURRENT_EM, 6.0, "big")
    swapped = codec.decode(R.CHARGING_CURRENT_EM, words, "little")
    assert not math.isclose(swapped, 6.0)
    assert words == [0x40C0, 0x0000]


def test_decode_span_picks_registers_inside_the_span() -> None:
    words = codec.encode(R.CURRENT_L1, 16.0) + codec.encode(R.CURRENT_L2, 15.5)
    out = codec.decode_span(R.REGISTERS, R.CURRENT_L1.address, words)
    assert out == {"CURRENT_L1": 16.0, "CURRENT_L2": 15.5}


@pytest.mark.parametrize("value", [9.1, 6.01, 229.2, 33.1, 0.01, 32.0, 1234567.0])
def test_float32_reads_show_the_digits_a_float32_holds(value: float) -> None:
    """9.1 written as float32 reads back 9.100000381 raw; people (and /metrics) should see 9.1."""
    words = codec.encode(R.CHARGING_CURRENT_EM, value)
    assert codec.decode(R.CHARGING_CURRENT_EM, words) == value
