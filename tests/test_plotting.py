"""plot_schedule draws exactly the schedule's values, with momentum only where it exists."""

from __future__ import annotations

import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import math

from matplotlib.figure import Figure

from lightning_reg import ScheduledLR
from lightning_reg.plotting import plot_schedule
from lightning_reg.schedules import (
    Chain,
    Constant,
    ExponentialDecay,
    LinearWarmup,
    OneCycle,
    Schedule,
)


def test_one_cycle_draws_lr_and_momentum_for_its_own_length() -> None:
    schedule = OneCycle(total_steps=50, max_lr=0.3)
    fig = plot_schedule(schedule)
    assert isinstance(fig, Figure)
    lr_axes, momentum_axes = fig.axes  # the LR axes and its momentum twin
    (lr_line,) = lr_axes.get_lines()
    (momentum_line,) = momentum_axes.get_lines()
    assert list(lr_line.get_xdata()) == list(range(50))
    assert list(lr_line.get_ydata()) == [schedule(k) for k in range(50)]
    assert list(momentum_line.get_ydata()) == [schedule.momentum(k) for k in range(50)]
    assert max(lr_line.get_ydata()) == pytest.approx(0.3)


def test_total_steps_overrides_the_schedule_length() -> None:
    schedule = OneCycle(total_steps=50, max_lr=0.3)
    (line,) = plot_schedule(schedule, total_steps=60).axes[0].get_lines()
    assert len(line.get_ydata()) == 60
    assert line.get_ydata()[-1] == schedule.final_lr  # held after the end


def test_schedule_without_momentum_has_no_twin_axis() -> None:
    schedule = ExponentialDecay(lr0=0.1, s=10)
    fig = plot_schedule(schedule, total_steps=30)
    assert len(fig.axes) == 1
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([0.1 * 0.1 ** (k / 10) for k in range(30)])
    no_momentum = OneCycle(total_steps=50, max_lr=0.3, cycle_momentum=False)
    assert len(plot_schedule(no_momentum).axes) == 1


def test_chain_momentum_is_held_where_the_running_schedule_leaves_it() -> None:
    # Past its 1cycle the chain's momentum is None: the optimizer keeps 0.95 (no crash).
    cycle = OneCycle(total_steps=20, max_lr=0.1)
    (line,) = plot_schedule(Chain([cycle, Constant(0.001)]), total_steps=30).axes[1].get_lines()
    assert list(line.get_ydata()) == [cycle.momentum(k) for k in range(20)] + [0.95] * 10
    # A warm-up before the 1cycle sets no momentum: not drawn there, drawn from the cycle on.
    (line,) = plot_schedule(Chain([LinearWarmup(5, 0.01), cycle])).axes[1].get_lines()
    assert all(math.isnan(m) for m in line.get_ydata()[:5])
    assert list(line.get_ydata()[5:]) == [cycle.momentum(k) for k in range(20)]


def test_an_epoch_callback_is_drawn_against_the_epoch() -> None:
    per_epoch = plot_schedule(ScheduledLR(ExponentialDecay(0.1, 2), interval="epoch"), 5)
    assert per_epoch.axes[0].get_xlabel() == "epoch"
    assert plot_schedule(ScheduledLR(ExponentialDecay(0.1, 2)), 5).axes[0].get_xlabel() == (
        "optimizer step"
    )


def test_plain_callable_and_given_axes() -> None:
    ax = Figure().add_subplot()
    fig = plot_schedule(lambda step: 1.0 / (step + 1), total_steps=7, ax=ax)
    assert fig is ax.figure
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [1.0 / (k + 1) for k in range(7)]


class _Sized:
    """A callback-like object: its schedule is sized only when ``total_steps`` is known."""

    def as_schedule(self, total_steps: int | None = None) -> Schedule:
        if total_steps is None:
            raise ValueError("pass `total_steps`")
        return OneCycle(total_steps=total_steps, max_lr=1.0)


def test_object_with_as_schedule_is_plotted_through_it() -> None:
    fig = plot_schedule(_Sized(), total_steps=40)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == [OneCycle(40, 1.0)(k) for k in range(40)]
    assert len(fig.axes) == 2


def test_missing_or_bad_total_steps_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="`total_steps` is required"):
        plot_schedule(lambda step: 0.1)
    with pytest.raises(ValueError, match="`total_steps` is required"):
        plot_schedule(ExponentialDecay(lr0=0.1, s=10))
    with pytest.raises(ValueError, match="`total_steps` must be an integer >= 1, got 0"):
        plot_schedule(lambda step: 0.1, total_steps=0)
    with pytest.raises(TypeError, match="`total_steps` must be an int"):
        plot_schedule(lambda step: 0.1, total_steps=5.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`schedule` must be"):
        plot_schedule(0.1, total_steps=5)


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "lightning-reg\[plot\]"'):
        plot_schedule(OneCycle(total_steps=50, max_lr=0.3))
