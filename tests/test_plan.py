"""Read planning: every wanted register read exactly once, no read across a gap, at the bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surplus.modbus import plan
from surplus.modbus import registers as R
from surplus.modbus.registers import Block

LAYOUTS = sorted(R.MODBUS_LAYOUT_VERSION.enum)
READABLE = tuple(r for r in R.REGISTERS if r.access.readable)


def mapped(layout: int) -> set[int]:
    return {a for r in plan.for_layout(READABLE, layout) for a in range(r.address, r.end)}


def check_plan(spans: list[plan.Span], wanted: tuple[R.Register, ...], layout: int, max_count: int) -> None:
    have = mapped(layout)
    covered = [r for s in spans for r in s.registers]
    assert sorted(covered, key=lambda r: r.address) == sorted(
        plan.for_layout(wanted, layout), key=lambda r: r.address
    ), "every wanted register exactly once"
    for span in spans:
        assert 1 <= span.count <= max_count
        assert all(a in have for a in range(span.address, span.end)), f"{span.label} crosses a gap"
        assert span.address == span.registers[0].address and span.end == span.registers[-1].end
        for reg in span.registers:
            assert span.address <= reg.address and reg.end <= span.end


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["FULL_POLL", "FAST_POLL", "CONTROL_POLL", "INFO", "CONFIG"])
def test_poll_sets_plan_cleanly_and_at_the_bound(name: str, layout: int) -> None:
    wanted = getattr(plan, name)
    spans = plan.plan_reads(wanted, layout=layout)
    check_plan(spans, wanted, layout, plan.DEFAULT_MAX_COUNT)
    bound = plan.lower_bound(wanted, layout=layout)
    assert plan.cost(spans) == bound  # ratio 1.0 in transactions and bytes


def test_full_poll_covers_every_readable_register_except_settings() -> None:
    names = {r.name for r in plan.FULL_POLL}
    assert names == {r.name for r in READABLE if r.block is not Block.SETTINGS}
    assert not any(r.block is Block.SETTINGS for r in plan.FAST_POLL + plan.CONTROL_POLL)
    assert R.HEARTBEAT_EM not in plan.FULL_POLL  # write-only
    assert {r.name for r in plan.FAST_POLL + plan.CONTROL_POLL} <= names


def test_fast_poll_is_three_reads_and_control_poll_reads_back_our_writes() -> None:
    fast = plan.plan_reads(plan.FAST_POLL)
    assert [s.label for s in fast] == [
        "EVSE_STATE..PHASE_ROTATION_STATUS",
        "CURRENT_L1..POWER_OVERALL",
        "ACTIVE_ERROR_CODE..SWITCHED_PHASES",
    ]
    written = {R.CHARGING_CURRENT_EM, R.CHARGING_RELEASE_EM, R.REQUESTED_PHASES, R.LOCK_EVSE}
    assert written <= set(plan.CONTROL_POLL)
    assert not set(plan.FAST_POLL) & set(plan.CONTROL_POLL)  # together: no register twice
    # Nine reads, and the energy counters (0x1000) so a total is never a minute behind.
    assert len(plan.plan_reads(plan.FAST_POLL + plan.CONTROL_POLL)) == 10
    assert {R.CHARGED_ENERGY_TOTAL, R.CHARGING_SESSIONS_TOTAL} <= set(plan.CONTROL_POLL)


def test_full_poll_on_the_newest_layout_is_fourteen_reads() -> None:
    spans = plan.plan_reads(plan.FULL_POLL)
    assert [(s.address, s.count) for s in spans] == [
        (0x0000, 9), (0x0013, 16), (0x0100, 4), (0x0108, 1), (0x0114, 2),
        (0x0300, 8), (0x030A, 1), (0x030C, 9), (0x0500, 20), (0x0900, 2),
        (0x0B00, 7), (0x0D02, 5), (0x0E00, 3), (0x1000, 4),
    ]  # fmt: skip


def test_old_layout_is_not_asked_for_registers_it_lacks() -> None:
    spans = plan.plan_reads(plan.FULL_POLL, layout=0x0100)
    names = {r.name for s in spans for r in s.registers}
    assert "SERIAL_NUMBER" not in names and "TEMPERATURE" not in names and "PHASE_OPTIONS_HW" not in names
    assert all(a < 0x0900 or a >= 0x0B00 for s in spans for a in range(s.address, s.end))


def test_bridges_unrequested_mapped_registers_but_not_gaps() -> None:
    spans = plan.plan_reads([R.CURRENT_L1, R.POWER_OVERALL])
    assert [(s.address, s.count) for s in spans] == [(0x0500, 20)]
    # 0x0104..0x0107 are unmapped: two reads even though they are close.
    spans = plan.plan_reads([R.PHASE_ROTATION_STATUS, R.CP_STATE], layout=0x0103)
    assert [(s.address, s.count) for s in spans] == [(0x0103, 1), (0x0108, 1)]


def test_max_count_is_respected_without_splitting_a_register() -> None:
    spans = plan.plan_reads(plan.FULL_POLL, max_count=8)
    check_plan(spans, plan.FULL_POLL, plan.LATEST_LAYOUT, 8)
    assert len(spans) > len(plan.plan_reads(plan.FULL_POLL))
    with pytest.raises(ValueError, match="FIRMWARE_VERSION needs 8"):
        plan.plan_reads([R.FIRMWARE_VERSION], max_count=4)
    with pytest.raises(ValueError, match="max_count"):
        plan.plan_reads(plan.FULL_POLL, max_count=0)


def test_write_only_registers_are_refused() -> None:
    with pytest.raises(ValueError, match="HEARTBEAT_EM is write-only"):
        plan.plan_reads([R.HEARTBEAT_EM])


@given(
    st.lists(st.sampled_from(READABLE), min_size=1, unique_by=lambda r: r.name),
    st.sampled_from(LAYOUTS),
    st.integers(min_value=8, max_value=125),
)
def test_any_subset_plans_cleanly_and_never_beats_the_bound(
    wanted: list[R.Register], layout: int, max_count: int
) -> None:
    regs = tuple(wanted)
    spans = plan.plan_reads(regs, layout=layout, max_count=max_count)
    check_plan(spans, regs, layout, max_count)
    bound = plan.lower_bound(regs, layout=layout, max_count=max_count)
    got = plan.cost(spans)
    assert got.transactions == bound.transactions  # greedy is optimal
    assert got.words >= bound.words


def test_wire_time_of_a_known_frame() -> None:
    # 8-byte request + 5+2*2 reply, two 3.5-char gaps, 11 bits per char at 57600 baud.
    cost = plan.cost(plan.plan_reads([R.VOLTAGE_L1]))
    assert cost.total_bytes == 17
    assert cost.wire_time_s() == pytest.approx((17 + 7) * 11 / 57600)


@pytest.mark.parametrize(
    ("ranges", "reads"),
    [
        ([], []),
        ([(1, 40070, 40075)], [(1, 40070, 5)]),
        ([(1, 40100, 40102), (1, 40070, 40075)], [(1, 40070, 32)]),  # sorted, then joined
        ([(1, 0, 100), (1, 100, 126)], [(1, 0, 100), (1, 100, 26)]),  # 126 in one read is too many
        ([(1, 0, 10), (2, 5, 10)], [(1, 0, 10), (2, 5, 5)]),  # units never share a read
        ([(1, 0, 10), (1, 2, 5)], [(1, 0, 10)]),  # a range inside another
    ],
)
def test_merge_ranges_makes_the_fewest_reads_within_125_registers(
    ranges: list[tuple[int, int, int]], reads: list[tuple[int, int, int]]
) -> None:
    assert plan.merge_ranges(ranges) == reads
