"""``plot_schedule``: draw a learning-rate schedule (and its momentum) with matplotlib."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning_reg._validation import check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_schedule"]


def plot_schedule(schedule: Any, total_steps: int | None = None, ax: Axes | None = None) -> Figure:
    """Plot the learning rate against the optimizer step (the epoch for a
    ``ScheduledLR(..., interval="epoch")``), and momentum on a twin axis.

    Args:
        schedule: a :class:`~lightning_reg.schedules.Schedule`, a plain callable
            ``step -> lr``, or an object with ``as_schedule(total_steps)`` (``OneCycleScheduler``,
            ``ScheduledLR``; not ``PerformanceScheduler``, whose LR follows a metric).
        total_steps: number of steps to draw (steps ``0 .. total_steps - 1``). Default ``None``:
            the schedule's own :attr:`~lightning_reg.schedules.Schedule.length` (a
            :class:`~lightning_reg.schedules.OneCycle`, a warm-up, a cosine decay or a
            :class:`~lightning_reg.schedules.Chain` ending in one has one); required for plain
            callables and open-ended schedules.
        ax: axes to draw on. Default ``None``: a new figure with one axes (made without
            ``pyplot``, so no global figure state and no GUI backend is needed).

    Returns:
        The (root) figure holding ``ax``. The LR is the axes' only line; when
        ``schedule.momentum(step)`` is not ``None`` at some step the momentum is drawn on a
        twin axes (``figure.axes[1]``), held where the schedule leaves it unchanged.

    Raises:
        ImportError: if matplotlib is not installed (``pip install "lightning-reg[plot]"``).
        TypeError: if ``schedule`` is not callable or ``total_steps`` is not an int.
        ValueError: if the number of steps is unknown or ``total_steps < 1``.

    Example:
        >>> from lightning_reg.plotting import plot_schedule
        >>> from lightning_reg.schedules import Chain, CosineDecay, LinearWarmup
        >>> fig = plot_schedule(Chain([LinearWarmup(100, 0.1), CosineDecay(900, 0.1)]))
        >>> len(fig.axes[0].lines[0].get_xdata())  # the chain's length: 1000 steps
        1000
    """
    figure_class = matplotlib_figure("plot_schedule")
    unit = "epoch" if getattr(schedule, "interval", "step") == "epoch" else "optimizer step"
    as_schedule = getattr(schedule, "as_schedule", None)
    if callable(as_schedule):
        schedule = as_schedule(total_steps)
    if not callable(schedule):
        raise TypeError(
            "`schedule` must be a Schedule, a callable `step -> lr` or have "
            f"`as_schedule(total_steps)`, got {schedule!r}."
        )
    steps = _resolve_steps(schedule, total_steps)
    lrs = [float(schedule(step)) for step in steps]
    momenta = _momenta(getattr(schedule, "momentum", None), steps)

    if ax is None:
        ax = figure_class().add_subplot()
    ax.plot(steps, lrs, color="tab:blue", label="learning rate")
    ax.set_xlabel(unit)
    ax.set_ylabel("learning rate", color="tab:blue")
    if momenta is not None:
        twin = ax.twinx()
        twin.plot(steps, momenta, color="tab:orange", label="momentum")
        twin.set_ylabel("momentum", color="tab:orange")
    return ax.figure.figure  # the root figure, also when ``ax`` is on a SubFigure


def matplotlib_figure(user: str) -> type[Figure]:
    """``matplotlib.figure.Figure``, or an ImportError naming ``user`` and the ``plot`` extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f'{user} needs matplotlib: pip install "lightning-reg[plot]"') from error
    return Figure


def _momenta(momentum: Any, steps: range) -> list[float] | None:
    """The momentum the optimizer holds at each step, or ``None`` if the schedule never sets it.

    A step where ``momentum(step)`` is ``None`` leaves the optimizer's momentum as it was (a
    :class:`~lightning_reg.schedules.Chain` past its 1cycle), so the last value is held; before
    the first value set, the optimizer's own momentum is unknown (NaN: not drawn).
    """
    if not callable(momentum):
        return None
    values: list[float] = []
    held = math.nan
    for step in steps:
        value = momentum(step)
        held = held if value is None else float(value)
        values.append(held)
    return None if all(math.isnan(v) for v in values) else values


def _resolve_steps(schedule: Callable[[int], float], total_steps: int | None) -> range:
    """``range(total_steps)``, taking the schedule's ``length`` when ``total_steps`` is None."""
    if total_steps is None:
        total_steps = getattr(schedule, "length", None)
        if total_steps is None:
            raise ValueError(
                f"`total_steps` is required to plot {schedule!r}: it has no length of its own."
            )
    return range(check_int("total_steps", total_steps, 1))
