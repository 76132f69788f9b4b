"""``surplus simulate --plot``: the day as a picture (matplotlib, the optional ``plot`` extra).

Top: PV, house, grid and car power; bottom: the setpoint and the phases. Where
the car line is below the PV-minus-house line, sun went to the grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .simulate_cli import Simulation

WIDTH_PX, HEIGHT_PX, DPI = 1600, 900, 100


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_day(path: str, sim: Simulation) -> None:
    """Write a PNG of ``sim`` to ``path`` (1600 × 900 pixels)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'surplus[plot]'") from None

    day, s = sim.day, sim.series
    start = sim.car.arrival_s - 1800
    end = sim.car.departure_s + 1800
    rows = [i for i in range(len(day.t_s)) if start <= day.t_s[i] <= end]
    hours = [day.t_s[i] / 3600 for i in rows]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, sharex=True, height_ratios=(3, 1)
    )
    top.step(hours, [day.pv_w[i] / 1000 for i in rows], where="post", color="#f2a900", label="PV")
    top.step(hours, [day.load_w[i] / 1000 for i in rows], where="post", color="#7f7f7f", label="house")
    surplus = [day.surplus_w(i) / 1000 for i in rows]
    top.step(hours, surplus, where="post", color="#2ca02c", linestyle=":", label="PV - house (surplus)")
    t = [x / 3600 for x in s.t_s]
    top.step(t, [w / 1000 for w in s.car_w], where="post", color="#1f77b4", label="car")
    top.step(
        t, [w / 1000 for w in s.grid_w], where="post", color="#d62728", alpha=0.6, label="grid (+ import)"
    )
    top.axhline(0, color="black", linewidth=0.5)
    top.set_ylabel("kW")
    run = sim.runs[0]
    top.set_title(
        f"{day.name}: capture {run.capture:.3f}, grid share {run.grid_share:.3f} "
        f"({run.controller}, {run.mode}); oracle {sim.oracle_wh / 1000:.1f} kWh"
    )
    top.legend(loc="upper left")
    bottom.step(t, list(s.current_a), where="post", color="#1f77b4", label="setpoint A")
    bottom.step(t, list(s.phases), where="post", color="#9467bd", label="phases")
    bottom.set_ylabel("A / phases")
    bottom.set_xlabel("hour of the day")
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
