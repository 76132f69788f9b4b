"""A few cycles of bench/soak.py: kill -9 / restart of `surplus run` against the simulator, with replugs."""

from __future__ import annotations

import pytest

from bench.soak import soak


@pytest.mark.integration
async def test_kill_9_cycles_break_no_rule_and_the_sessions_add_up() -> None:
    result = await soak(
        3,
        seed=7,
        up_s=(3.0, 4.0),
        down_s=(0.2, 0.6),
        modes=("fixed",),
        events_every_s=(2.0, 5.0),
        unplug_at_end=False,
        log=False,
    )
    assert sum(result.plug_events.values()) >= 3
    assert not result.violations, result.report()
    assert result.integrity == "ok"
    assert result.rows >= 1 and not result.open_rows and not result.overlaps, result.report()
    assert result.box_exact_wh > 20, result.report()  # it charged
    assert result.adds_up, result.report()
