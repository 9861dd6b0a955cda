"""Pure learning-rate schedules: frozen objects mapping an optimizer step to a learning rate.

A schedule is a function of the step alone (no state, no Lightning), so resuming from a
checkpoint and agreeing across processes come for free: every rank computes the same number.
The callbacks in :mod:`lightning_reg.callbacks` decide *when* to apply them.
"""

from __future__ import annotations

import abc
import bisect
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from lightning_reg._validation import (
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_number,
    check_positive,
)

__all__ = [
    "Chain",
    "Constant",
    "CosineDecay",
    "ExponentialDecay",
    "LinearWarmup",
    "Knots",
    "OneCycle",
    "PiecewiseConstant",
    "PolynomialDecay",
    "PowerDecay",
    "Schedule",
]

Anneal = Literal["linear", "cos"]
_ANNEALS = ("linear", "cos")


def _interpolate(start: float, end: float, pct: float, anneal: Anneal) -> float:
    """From ``start`` (``pct=0``) to ``end`` (``pct=1``), with torch's OneCycleLR arithmetic."""
    if anneal == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _periods(step: int, s: float, staircase: bool) -> float:
    """How many periods ``s`` long lie before ``step``: whole ones with ``staircase``
    (``floor(step / s)`` as Keras, not ``step // s``: ``11 // 1.1`` is 9.0)."""
    return math.floor(step / s) if staircase else step / s


class Schedule(abc.ABC):
    """Base of the schedules: the learning rate (and optionally momentum) at an optimizer step.

    Steps are 0-based counts of optimizer steps: ``schedule(k)`` is the learning rate used by
    the ``k``-th update. Subclasses implement :meth:`__call__` (starting with
    ``step = self._check_step(step)``) and may override :meth:`momentum`.

    Example:
        >>> from lightning_reg.schedules import Schedule
        >>> class Halving(Schedule):
        ...     def __call__(self, step: int) -> float:
        ...         return 0.1 * 0.5 ** (self._check_step(step) // 100)
        >>> Halving()(250)
        0.025
    """

    @abc.abstractmethod
    def __call__(self, step: int) -> float:
        """The learning rate at 0-based optimizer step ``step`` (each subclass's docstring gives
        its formula). Raises TypeError if ``step`` is not an int (bools included), ValueError if
        it is negative."""

    def momentum(self, step: int) -> float | None:
        """The momentum at ``step`` (SGD ``momentum``, Adam ``betas[0]``), or ``None`` when the
        schedule does not drive momentum (the default). Raises as :meth:`__call__`."""
        self._check_step(step)
        return None

    def get_config(self) -> dict[str, Any]:
        """The schedule as plain data: its class name and its fields (nested schedules as their
        own configs), as Keras' ``get_config``. Checkpoints save it; a resume compares it.

        Returns:
            ``{"class": name, field: value, ...}``.
        """
        config: dict[str, Any] = {"class": type(self).__name__}
        names: list[str] = [f.name for f in fields(self) if f.init] if is_dataclass(self) else []
        for name in names:
            value = getattr(self, name)
            if isinstance(value, tuple) and value and isinstance(value[0], Schedule):
                value = [v.get_config() for v in value]
            config[name] = value
        return config

    @property
    def length(self) -> int | None:
        """Steps after which the value no longer changes, or ``None`` for an open-ended schedule.

        A :class:`Chain` hands over to its next schedule after this many steps, and the
        callbacks warn when a run ends before a schedule's ``length``. ``None`` by default.
        """
        return None

    def as_schedule(self, total_steps: int | None = None) -> Schedule:
        """This schedule itself, so schedules and callbacks are interchangeable for plotting.

        Args:
            total_steps: ignored (default ``None``); callbacks use it to size their schedule.

        Returns:
            ``self``.
        """
        return self

    @staticmethod
    def _check_step(step: object) -> int:
        """``step`` as an int; raises TypeError for non-ints and bools, ValueError if < 0."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"`step` must be an int >= 0, got {step!r}.")
        if step < 0:
            raise ValueError(f"`step` must be an int >= 0, got {step!r}.")
        return int(step)


class _Span(Schedule):
    """A schedule that moves between two LRs over its first ``steps`` steps (its ``length``)."""

    steps: int

    @property
    def length(self) -> int:
        """``steps``."""
        return self.steps

    def _check_span(self, top: str, other: str) -> None:
        """Validate and store ``steps`` (int >= 1), ``top`` (> 0) and ``other`` (in [0, top])."""
        object.__setattr__(self, "steps", check_int("steps", self.steps, 1))
        high = check_positive(top, getattr(self, top))
        value = check_number(
            other, getattr(self, other), f">= 0 and <= {top} ({high!r})", lambda x: 0 <= x <= high
        )
        object.__setattr__(self, top, high)
        object.__setattr__(self, other, value)


@dataclass(frozen=True)
class Knots(Schedule):
    """A schedule given by its knots: the LR (and momentum) at a few steps, interpolated between.

    Between knots ``steps[i]`` and ``steps[i + 1]`` the value moves from ``lrs[i]`` to
    ``lrs[i + 1]`` linearly or along a half cosine (``anneal``), with the arithmetic of torch's
    ``OneCycleLR``; at and after the last knot it holds ``lrs[-1]``. Knot positions may be
    fractional (torch's phase ends are). Both forms of the 1cycle policy are knots:
    :class:`OneCycle` (the textbook's) builds them from its fields, and
    :meth:`OneCycle.from_torch` returns torch's.

    Args:
        steps: knot positions, strictly increasing finite numbers starting at 0 (at least 2).
        lrs: the learning rate at each knot, finite >= 0.
        momenta: the momentum at each knot, in ``[0, 1)``, or ``None`` (default) to leave
            momentum alone.
        anneal: ``"linear"`` (default) or ``"cos"``.
        total_steps: the optimizer steps the schedule is meant for (its :attr:`length`), an int
            >= the last knot - 1. Default ``None``: the last knot, rounded up.

    Raises:
        TypeError: if a value has the wrong type (bools are rejected for numbers).
        ValueError: if the lengths differ, the steps are not strictly increasing from 0, or a
            value is out of range.

    Example:
        >>> from lightning_reg.schedules import Knots
        >>> triangle = Knots(steps=[0, 10, 20], lrs=[0.0, 0.1, 0.0])
        >>> triangle(5), triangle(10), triangle(15), triangle(99), triangle.length
        (0.05, 0.1, 0.05, 0.0, 20)
    """

    steps: Sequence[float]
    lrs: Sequence[float]
    momenta: Sequence[float] | None = None
    anneal: Anneal = "linear"
    total_steps: int | None = None

    def __post_init__(self) -> None:
        steps = tuple(check_non_negative(f"steps[{i}]", s) for i, s in enumerate(self.steps))
        if len(steps) < 2 or steps[0] != 0 or any(a >= b for a, b in itertools.pairwise(steps)):
            raise ValueError(
                "`steps` must be at least 2 strictly increasing numbers starting at 0, "
                f"got {tuple(self.steps)}."
            )
        lrs = tuple(check_non_negative(f"lrs[{i}]", v) for i, v in enumerate(self.lrs))
        momenta = None
        if self.momenta is not None:
            momenta = tuple(
                check_number(f"momenta[{i}]", m, ">= 0 and < 1", lambda x: 0 <= x < 1)
                for i, m in enumerate(self.momenta)
            )
        for name, values in (("lrs", lrs), ("momenta", momenta)):
            if values is not None and len(values) != len(steps):
                raise ValueError(
                    f"`{name}` must have one value per knot ({len(steps)}), got {len(values)}."
                )
        check_choice("anneal", self.anneal, _ANNEALS)
        last = math.ceil(steps[-1])
        total = last if self.total_steps is None else self.total_steps
        total = check_int("total_steps", total, max(last - 1, 1))
        for name, value in (("steps", steps), ("lrs", lrs), ("momenta", momenta)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "total_steps", total)

    @property
    def length(self) -> int:
        """``total_steps``."""
        return int(self.total_steps)  # type: ignore[arg-type]  # resolved in __post_init__

    def _segment(self, step: int) -> tuple[int, float]:
        """The knot ``i`` that starts the segment holding ``step``, and the fraction done.

        As torch's ``OneCycleLR``: the first segment whose end is at or after ``step``.
        """
        for i in range(len(self.steps) - 1):
            start, end = self.steps[i], self.steps[i + 1]
            if step <= end:
                return i, (step - start) / (end - start)
        return len(self.steps) - 1, 0.0

    def _value(self, values: Sequence[float], step: int) -> float:
        i, pct = self._segment(self._check_step(step))
        if i == len(values) - 1:
            return values[-1]
        return _interpolate(values[i], values[i + 1], pct, self.anneal)

    def __call__(self, step: int) -> float:
        return self._value(self.lrs, step)

    def momentum(self, step: int) -> float | None:
        if self.momenta is None:
            self._check_step(step)
            return None
        return self._value(self.momenta, step)


@dataclass(frozen=True)
class OneCycle(Schedule):
    """The 1cycle policy (Smith, 2018): a rise of the LR, a descent, then a final annihilation.

    The defaults are the textbook's (Géron, *Hands-On Machine Learning*, ch. 11), taken from
    Smith's paper: the LR rises linearly from ``start_lr = max_lr / 10`` to ``max_lr`` over the
    first half of the cycle, falls back to ``start_lr`` over the second half, then falls to
    ``final_lr = start_lr / 1000`` over the last ``total_steps // 10 + 1`` steps. Momentum moves
    the other way: from ``max_momentum`` down to ``min_momentum`` while the LR rises, back up
    while it falls, and holds ``max_momentum`` in the final phase.

    The schedule is its :attr:`knots` (a :class:`Knots`), at the steps
    ``0, warmup_steps, total_steps - final_steps, total_steps``:

    - rise: ``start_lr -> max_lr``, ``max_momentum -> min_momentum``;
    - descent: ``max_lr -> start_lr``, ``min_momentum -> max_momentum``;
    - final: ``start_lr -> final_lr``, momentum held at ``max_momentum``.

    With ``final_steps=0`` there is no final phase and the descent goes straight from
    ``max_lr`` to ``final_lr`` (the two-phase schedule of fastai). ``final_lr`` is reached at
    step ``total_steps``, one step after the last update, as in the textbook; steps from there
    on hold ``final_lr`` and ``max_momentum`` (asking for them is not an error). Torch's
    ``OneCycleLR`` places its knots differently (fractional phase ends, ``final_lr`` on the last
    update): :meth:`from_torch` builds those knots.

    Resolved defaults are stored in the fields: ``OneCycle(100, 1.0).start_lr == 0.1``, and
    ``OneCycle(**{f: getattr(s, f) for f in init_fields})`` rebuilds the same schedule.

    Args:
        total_steps: number of optimizer steps of the run; int >= 2 (>= 3 with the default
            phases).
        max_lr: peak learning rate; finite > 0.
        start_lr: learning rate at step 0 and at the end of the descent. Default ``None``:
            ``max_lr / 10``.
        final_lr: learning rate reached at ``total_steps``. Default ``None``:
            ``start_lr / 1000``.
        final_steps: length of the final phase, an int. Default ``None``:
            ``total_steps // 10 + 1`` (when ``warmup_steps`` is also ``None``, rounded up by one
            step where needed so that the rise and the descent have the same whole length, as in
            the textbook, e.g. 12 for ``total_steps=100``). ``0`` gives the two-phase schedule.
        warmup_steps: length of the rise, i.e. the step at which the LR peaks; an int > 0.
            Default ``None``: half of ``total_steps - final_steps``, rounded down.
        anneal: ``"linear"`` (default) or ``"cos"`` (cosine interpolation inside each phase).
        cycle_momentum: drive momentum inversely to the LR (default ``True``); when ``False``
            :meth:`momentum` returns ``None`` and the momentum fields are neither checked nor
            used.
        max_momentum: momentum at the start, at the end of the descent and in the final
            phase (default 0.95).
        min_momentum: momentum at the LR peak (default 0.85);
            ``0 <= min_momentum <= max_momentum < 1``.

    Raises:
        TypeError: if an argument has the wrong type (bools are rejected for numbers, and
            ``warmup_steps``/``final_steps`` must be ints).
        ValueError: if an argument is out of range (NaN and inf included), if
            ``final_lr <= start_lr <= max_lr`` fails, or if a phase would be empty
            (``0 < warmup_steps < total_steps - final_steps`` is required).

    Example:
        >>> from lightning_reg.schedules import OneCycle
        >>> schedule = OneCycle(total_steps=1000, max_lr=0.1)
        >>> schedule(0), schedule(449), round(schedule(999), 6), schedule.momentum(449)
        (0.01, 0.1, 0.000108, 0.85)
        >>> schedule.knots.steps
        (0.0, 449.0, 898.0, 1000.0)
    """

    total_steps: int
    max_lr: float
    start_lr: float | None = None
    final_lr: float | None = None
    final_steps: int | None = None
    warmup_steps: int | None = None
    anneal: Anneal = "linear"
    cycle_momentum: bool = True
    max_momentum: float = 0.95
    min_momentum: float = 0.85
    knots: Knots = field(init=False, repr=False, compare=False)
    """The cycle as :class:`Knots`; derived, read-only."""

    def __post_init__(self) -> None:
        total = check_int("total_steps", self.total_steps, 2)
        max_lr, start_lr, final_lr, high, low = self.check_arguments(
            self.max_lr,
            self.start_lr,
            self.final_lr,
            self.final_steps,
            self.warmup_steps,
            self.anneal,
            self.cycle_momentum,
            self.max_momentum,
            self.min_momentum,
        )
        assert max_lr is not None and start_lr is not None and final_lr is not None
        warmup, final = self.phase_lengths(total, self.final_steps, self.warmup_steps)
        resolved = {
            "total_steps": total,
            "max_lr": max_lr,
            "start_lr": start_lr,
            "final_lr": final_lr,
            "final_steps": final,
            "warmup_steps": warmup,
            "max_momentum": high,
            "min_momentum": low,
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        if final > 0:
            steps, lrs = [0, warmup, total - final, total], [start_lr, max_lr, start_lr, final_lr]
            momenta = [high, low, high, high]
        else:
            steps, lrs, momenta = (
                [0, warmup, total],
                [start_lr, max_lr, final_lr],
                [high, low, high],
            )
        knots = Knots(
            steps, lrs, momenta if self.cycle_momentum else None, self.anneal, total_steps=total
        )
        object.__setattr__(self, "knots", knots)

    @staticmethod
    def phase_lengths(
        total_steps: int, final_steps: int | None = None, warmup_steps: int | None = None
    ) -> tuple[int, int]:
        """``(warmup_steps, final_steps)`` of a cycle of ``total_steps``, defaults resolved;
        raises when the phases do not fit, so a cycle sized at fit time is checked before the
        peak is known.

        Example:
            >>> from lightning_reg.schedules import OneCycle
            >>> OneCycle.phase_lengths(1000)
            (449, 102)
        """
        total = check_int("total_steps", total_steps, 2)
        final = total // 10 + 1 if final_steps is None else final_steps
        if final >= total:
            raise ValueError(f"`final_steps` must be < total_steps ({total}), got {final!r}.")
        warmup = (total - final) // 2 if warmup_steps is None else warmup_steps
        if not 0 < warmup < total - final:
            raise ValueError(
                f"`warmup_steps` must be > 0 and < total_steps - final_steps ({total - final}) "
                f"so that the rise and the descent are not empty (total_steps={total}), "
                f"got {warmup!r}."
            )
        if final_steps is None and warmup_steps is None:
            final = total - 2 * warmup  # the textbook's rounding: the odd step goes last
        return warmup, final

    @staticmethod
    def check_arguments(
        max_lr: float | None,
        start_lr: float | None = None,
        final_lr: float | None = None,
        final_steps: int | None = None,
        warmup_steps: int | None = None,
        anneal: Anneal = "linear",
        cycle_momentum: bool = True,
        max_momentum: float = 0.95,
        min_momentum: float = 0.85,
    ) -> tuple[float | None, float | None, float | None, float, float]:
        """Validate every argument that does not depend on ``total_steps``, as the constructor
        does, so a callback that sizes the cycle at fit time rejects bad values at once.

        ``max_lr=None`` stands for a peak not known yet (``max_lr="auto"``): ``start_lr`` is then
        checked at fit time against the peak found.

        Returns:
            ``(max_lr, start_lr, final_lr, max_momentum, min_momentum)`` with the defaults
            resolved where they can be.

        Raises:
            TypeError, ValueError: as the constructor.

        Example:
            >>> from lightning_reg.schedules import OneCycle
            >>> OneCycle.check_arguments(0.1, final_lr=0.0)
            (0.1, 0.01, 0.0, 0.95, 0.85)
        """
        peak = None if max_lr is None else check_positive("max_lr", max_lr)
        if start_lr is None and peak is not None:
            start_lr = peak / 10
        if start_lr is not None:
            bound = math.inf if peak is None else peak
            start_lr = check_number(
                "start_lr", start_lr, f">= 0 and <= max_lr ({peak!r})", lambda x: 0 <= x <= bound
            )
            final_lr = start_lr / 1000 if final_lr is None else final_lr
        if final_lr is not None:
            top = math.inf if start_lr is None else start_lr
            final_lr = check_number(
                "final_lr",
                final_lr,
                f">= 0 and <= start_lr ({start_lr!r})",
                lambda x: 0 <= x <= top,
            )
        if final_steps is not None:
            check_int("final_steps", final_steps, 0)
        if warmup_steps is not None:
            check_int("warmup_steps", warmup_steps, 0)
        check_choice("anneal", anneal, _ANNEALS)
        check_bool("cycle_momentum", cycle_momentum)
        high, low = max_momentum, min_momentum
        if cycle_momentum:
            high = check_number("max_momentum", high, ">= 0 and < 1", lambda x: 0 <= x < 1)
            low = check_number(
                "min_momentum",
                low,
                f">= 0 and <= max_momentum ({high!r})",
                lambda x: 0 <= x <= high,
            )
        return peak, start_lr, final_lr, high, low

    @staticmethod
    def from_torch(
        total_steps: int,
        max_lr: float,
        pct_start: float = 0.3,
        anneal_strategy: Anneal = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> Knots:
        """The schedule of ``torch.optim.lr_scheduler.OneCycleLR`` with the same arguments.

        ``schedule(k)`` and ``schedule.momentum(k)`` equal the LR and momentum (SGD
        ``momentum``, Adam ``betas[0]``) that torch's scheduler has set when the ``k``-th
        optimizer step is taken, i.e. after ``k`` calls of ``scheduler.step()``: bit for bit,
        with the same knots and float arithmetic. Torch's knots are ``0``,
        ``pct_start * total_steps - 1`` (the peak), for three phases
        ``2 * pct_start * total_steps - 2`` (end of the descent), and ``total_steps - 1``
        (``final_lr`` on the last update).

        Args:
            total_steps: number of optimizer steps; int >= 2. Also the schedule's ``length``.
            max_lr: peak learning rate; finite > 0.
            pct_start: fraction of the steps spent rising (default 0.3); in ``(0, 1)`` with
                ``pct_start * total_steps > 1``, and for ``three_phase`` also
                ``2 * pct_start * total_steps - 2 < total_steps - 1``.
            anneal_strategy: ``"cos"`` (default) or ``"linear"``.
            div_factor: ``start_lr = max_lr / div_factor`` (default 25.0); >= 1.
            final_div_factor: ``final_lr = start_lr / final_div_factor`` (default 1e4); >= 1.
            three_phase: descend back to ``start_lr`` symmetrically, then annihilate to
                ``final_lr`` (default ``False``: descend straight to ``final_lr``).
            cycle_momentum: cycle momentum inversely to the LR (default ``True``); when ``False``
                the momentum arguments are neither checked nor used.
            base_momentum: momentum at the LR peak (default 0.85);
                ``0 <= base_momentum <= max_momentum``.
            max_momentum: momentum at the start and the end (default 0.95); in ``[0, 1)``.

        Returns:
            The equivalent :class:`Knots`.

        Raises:
            TypeError: if an argument has the wrong type (bools are rejected for numbers, and
                ``three_phase``/``cycle_momentum`` must be bools).
            ValueError: if an argument is out of range or a phase would be empty.

        Example:
            >>> from lightning_reg.schedules import OneCycle
            >>> schedule = OneCycle.from_torch(total_steps=1000, max_lr=0.1, pct_start=0.25)
            >>> round(schedule(0), 12), schedule(249), schedule(999)
            (0.004, 0.1, 4e-07)
        """
        total = check_int("total_steps", total_steps, 2)
        max_lr = check_positive("max_lr", max_lr)
        pct = check_number("pct_start", pct_start, "> 0 and < 1", lambda x: 0 < x < 1)
        div = check_number("div_factor", div_factor, ">= 1", lambda x: x >= 1)
        final_div = check_number("final_div_factor", final_div_factor, ">= 1", lambda x: x >= 1)
        check_choice("anneal_strategy", anneal_strategy, _ANNEALS)
        check_bool("three_phase", three_phase)
        if check_bool("cycle_momentum", cycle_momentum):
            high = check_number("max_momentum", max_momentum, ">= 0 and < 1", lambda x: 0 <= x < 1)
            check_number(
                "base_momentum",
                base_momentum,
                f">= 0 and <= max_momentum ({high!r})",
                lambda x: 0 <= x <= high,
            )
        peak, end = float(pct * total) - 1, total - 1
        descent_end = float(2 * pct * total) - 2 if three_phase else end
        if not (0 < peak < descent_end and (descent_end < end or not three_phase)):
            extra = " and 2 * pct_start * total_steps - 2 < total_steps - 1" if three_phase else ""
            raise ValueError(
                f"`pct_start` must satisfy pct_start * total_steps > 1{extra} so that no "
                f"phase is empty, got pct_start={pct_start!r} with total_steps={total_steps}."
            )
        start_lr = max_lr / div
        final_lr = start_lr / final_div
        high, low = max_momentum, base_momentum
        if three_phase:
            steps = [0.0, peak, descent_end, end]
            lrs, momenta = [start_lr, max_lr, start_lr, final_lr], [high, low, high, high]
        else:
            steps, lrs, momenta = [0.0, peak, end], [start_lr, max_lr, final_lr], [high, low, high]
        return Knots(
            steps, lrs, momenta if cycle_momentum else None, anneal_strategy, total_steps=total
        )

    @property
    def length(self) -> int:
        """``total_steps``: the cycle's length (``final_lr`` is held from there on)."""
        return self.total_steps

    def __call__(self, step: int) -> float:
        return self.knots(step)

    def momentum(self, step: int) -> float | None:
        return self.knots.momentum(step)


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """Exponential scheduling: ``lr0 * rate ** (step / s)``, the LR is divided by ``1 / rate``
    every ``s`` steps; with ``staircase=True``, ``lr0 * rate ** floor(step / s)`` (Keras'
    ``ExponentialDecay(staircase=True)``, torch's ``StepLR`` for an int ``s``).

    Args:
        lr0: learning rate at step 0; finite > 0.
        s: steps per factor of ``rate``; finite > 0.
        rate: decay factor per ``s`` steps (default 0.1); ``0 < rate <= 1``.
        staircase: decay in whole steps of ``s`` (default ``False``).

    Raises:
        TypeError: if an argument is not a number (bools included).
        ValueError: if an argument is out of range, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import ExponentialDecay
        >>> schedule = ExponentialDecay(lr0=0.01, s=1000)
        >>> round(schedule(2000), 12)
        0.0001
    """

    lr0: float
    s: float
    rate: float = 0.1
    staircase: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr0", check_positive("lr0", self.lr0))
        object.__setattr__(self, "s", check_positive("s", self.s))
        object.__setattr__(
            self, "rate", check_number("rate", self.rate, "> 0 and <= 1", lambda x: 0 < x <= 1)
        )
        check_bool("staircase", self.staircase)

    def __call__(self, step: int) -> float:
        return self.lr0 * self.rate ** _periods(self._check_step(step), self.s, self.staircase)


@dataclass(frozen=True)
class PowerDecay(Schedule):
    """Power scheduling: ``lr0 / (1 + step / s) ** c``; with ``c=1`` the LR halves at ``s``
    steps, is a third at ``2 * s``, and so on (Keras' ``InverseTimeDecay``). With
    ``staircase=True``: ``lr0 / (1 + floor(step / s)) ** c`` (Keras' ``staircase``).

    Args:
        lr0: learning rate at step 0; finite > 0.
        s: steps scale; finite > 0.
        c: power (default 1.0); finite >= 0.
        staircase: decay in whole steps of ``s`` (default ``False``).

    Raises:
        TypeError: if an argument is not a number (bools included).
        ValueError: if an argument is out of range, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import PowerDecay
        >>> schedule = PowerDecay(lr0=0.01, s=1000)
        >>> schedule(1000)
        0.005
    """

    lr0: float
    s: float
    c: float = 1.0
    staircase: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr0", check_positive("lr0", self.lr0))
        object.__setattr__(self, "s", check_positive("s", self.s))
        object.__setattr__(self, "c", check_non_negative("c", self.c))
        check_bool("staircase", self.staircase)

    def __call__(self, step: int) -> float:
        return self.lr0 / (1 + _periods(self._check_step(step), self.s, self.staircase)) ** self.c


@dataclass(frozen=True)
class PolynomialDecay(_Span):
    """Polynomial decay: from ``lr0`` at step 0 to ``final_lr`` at step ``steps``, then
    ``final_lr``: ``(lr0 - final_lr) * (1 - min(step, steps) / steps) ** power + final_lr``.

    Keras' ``PolynomialDecay`` (``end_learning_rate=final_lr``, ``cycle=False``); with
    ``final_lr=0`` torch's ``PolynomialLR(total_iters=steps, power=power)`` from ``lr0``.

    Args:
        steps: length of the decay in optimizer steps; int >= 1. Also its :attr:`length`.
        lr0: learning rate at step 0; finite > 0.
        final_lr: learning rate from step ``steps`` on (default 0.0); ``0 <= final_lr <= lr0``.
        power: exponent (default 1.0: linear decay); finite > 0.

    Raises:
        TypeError: if an argument has the wrong type (bools are rejected for numbers).
        ValueError: if an argument is out of range, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import PolynomialDecay
        >>> decay = PolynomialDecay(steps=100, lr0=0.1, power=2.0)
        >>> decay(0), round(decay(50), 12), decay(100), decay(1000)
        (0.1, 0.025, 0.0, 0.0)
    """

    steps: int
    lr0: float
    final_lr: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        self._check_span("lr0", "final_lr")
        object.__setattr__(self, "power", check_positive("power", self.power))

    def __call__(self, step: int) -> float:
        done = min(self._check_step(step), self.steps) / self.steps
        return (self.lr0 - self.final_lr) * (1.0 - done) ** self.power + self.final_lr


@dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """Piecewise constant scheduling: ``values[i]`` where ``i`` counts the boundaries ``<= step``.

    The value changes *at* a boundary step, as with torch's ``MultiStepLR`` milestones:
    ``boundaries=(10,)`` gives ``values[0]`` for steps 0 to 9 and ``values[1]`` from step 10.
    (Keras' ``PiecewiseConstantDecay`` changes one step later: it keeps ``values[0]`` while
    ``step <= boundaries[0]``.) Both sequences are stored as tuples.

    Args:
        boundaries: strictly increasing ints > 0 (may be empty: a constant schedule).
        values: ``len(boundaries) + 1`` learning rates, each finite >= 0.

    Raises:
        TypeError: if a boundary is not an int or a value not a number (bools included).
        ValueError: if the lengths do not match, the boundaries are not strictly increasing
            positive ints, or a value is negative, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import PiecewiseConstant
        >>> schedule = PiecewiseConstant(boundaries=[500, 800], values=[0.01, 0.005, 0.001])
        >>> schedule(499), schedule(500), schedule(800)
        (0.01, 0.005, 0.001)
    """

    boundaries: Sequence[int]
    values: Sequence[float]

    def __post_init__(self) -> None:
        boundaries = tuple(
            check_int(f"boundaries[{i}]", b, 1) for i, b in enumerate(self.boundaries)
        )
        values = tuple(check_non_negative(f"values[{i}]", v) for i, v in enumerate(self.values))
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"`values` must have len(boundaries) + 1 = {len(boundaries) + 1} entries, "
                f"got {len(values)}."
            )
        if any(a >= b for a, b in itertools.pairwise(boundaries)):
            raise ValueError(f"`boundaries` must be strictly increasing, got {boundaries}.")
        object.__setattr__(self, "boundaries", boundaries)
        object.__setattr__(self, "values", values)

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, self._check_step(step))]


@dataclass(frozen=True)
class Constant(Schedule):
    """A constant learning rate: ``lr`` at every step (a tail for :class:`Chain`).

    Args:
        lr: the learning rate; finite >= 0.

    Raises:
        TypeError: if ``lr`` is not a number (bools included).
        ValueError: if ``lr`` is negative, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import Constant
        >>> Constant(0.01)(12345)
        0.01
    """

    lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", check_non_negative("lr", self.lr))

    def __call__(self, step: int) -> float:
        self._check_step(step)
        return self.lr


@dataclass(frozen=True)
class LinearWarmup(_Span):
    """Linear warm-up: from ``start_lr`` at step 0 up to ``lr`` at step ``steps``, then ``lr``.

    ``lr(k) = start_lr + (lr - start_lr) * k / steps`` for ``k < steps`` (timm's and Composer's
    linear warm-up). Chain it before a decay: ``Chain([LinearWarmup(100, 0.1),
    CosineDecay(900, 0.1)])``.

    Args:
        steps: length of the warm-up in optimizer steps; int >= 1. Also its :attr:`length`.
        lr: learning rate reached at step ``steps``; finite > 0.
        start_lr: learning rate at step 0 (default 0.0); ``0 <= start_lr <= lr``.

    Raises:
        TypeError: if an argument has the wrong type (bools are rejected for numbers).
        ValueError: if an argument is out of range, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import LinearWarmup
        >>> warmup = LinearWarmup(steps=4, lr=0.1)
        >>> warmup(0), warmup(1), warmup(2), warmup(4), warmup(5)
        (0.0, 0.025, 0.05, 0.1, 0.1)
    """

    steps: int
    lr: float
    start_lr: float = 0.0

    def __post_init__(self) -> None:
        self._check_span("lr", "start_lr")

    def __call__(self, step: int) -> float:
        step = self._check_step(step)
        if step >= self.steps:
            return self.lr
        return _interpolate(self.start_lr, self.lr, step / self.steps, "linear")


@dataclass(frozen=True)
class CosineDecay(_Span):
    """Cosine decay: from ``lr0`` at step 0 to ``final_lr`` at step ``steps`` along a half
    cosine, then ``final_lr`` (Loshchilov & Hutter's SGDR without restarts; Keras'
    ``CosineDecay`` with ``alpha = final_lr / lr0``).

    ``lr(k) = final_lr + (lr0 - final_lr) / 2 * (1 + cos(pi * min(k, steps) / steps))``.

    Args:
        steps: length of the decay in optimizer steps; int >= 1. Also its :attr:`length`.
        lr0: learning rate at step 0; finite > 0.
        final_lr: learning rate from step ``steps`` on (default 0.0); ``0 <= final_lr <= lr0``.

    Raises:
        TypeError: if an argument has the wrong type (bools are rejected for numbers).
        ValueError: if an argument is out of range, NaN or infinite.

    Example:
        >>> from lightning_reg.schedules import CosineDecay
        >>> decay = CosineDecay(steps=100, lr0=0.1)
        >>> decay(0), round(decay(50), 12), decay(100), decay(1000)
        (0.1, 0.05, 0.0, 0.0)
    """

    steps: int
    lr0: float
    final_lr: float = 0.0

    def __post_init__(self) -> None:
        self._check_span("lr0", "final_lr")

    def __call__(self, step: int) -> float:
        step = min(self._check_step(step), self.steps)
        return _interpolate(self.lr0, self.final_lr, step / self.steps, "cos")


@dataclass(frozen=True)
class Chain(Schedule):
    """Schedules one after another, each for a number of optimizer steps.

    ``schedules[i]`` runs for ``steps[i]`` steps, counted from its own step 0; the last one runs
    from then on. ``steps`` defaults to each schedule's :attr:`~Schedule.length`
    (``LinearWarmup.steps``, ``CosineDecay.steps``, ``OneCycle.total_steps``), so a warm-up then
    a cosine decay is ``Chain([LinearWarmup(100, 0.1), CosineDecay(900, 0.1)])``. Momentum comes
    from the running schedule (``None`` while it does not drive momentum, which leaves the
    optimizer's momentum as the previous schedule left it). A chain is a pure function of the
    step like any schedule, so it resumes and agrees across processes with no extra state.

    Args:
        schedules: one or more :class:`Schedule` objects (stored as a tuple).
        steps: how long each schedule but the last runs, ints >= 1 (``len(schedules) - 1``
            values). Default ``None``: each one's ``length``.

    Raises:
        TypeError: if an entry is not a :class:`Schedule` or a step count not an int.
        ValueError: if ``schedules`` is empty, ``steps`` has the wrong length or a value < 1, or
            ``steps`` is ``None`` and a schedule before the last has no ``length``.

    Example:
        >>> from lightning_reg.schedules import Chain, Constant, CosineDecay, LinearWarmup
        >>> chain = Chain([LinearWarmup(10, 0.1), CosineDecay(90, 0.1), Constant(0.001)])
        >>> chain(5), chain(10), round(chain(55), 12), chain(100), chain.length is None
        (0.05, 0.1, 0.05, 0.001, True)
    """

    schedules: Sequence[Schedule]
    steps: Sequence[int] | None = None
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The step at which each schedule after the first starts; derived, read-only."""

    def __post_init__(self) -> None:
        schedules = tuple(self.schedules)
        if not schedules:
            raise ValueError("`schedules` must hold at least one schedule, got none.")
        for i, schedule in enumerate(schedules):
            if not isinstance(schedule, Schedule):
                raise TypeError(
                    f"`schedules[{i}]` must be a Schedule (lightning_reg.schedules), got "
                    f"{schedule!r}."
                )
        if self.steps is None:
            missing = [i for i, s in enumerate(schedules[:-1]) if s.length is None]
            if missing:
                raise ValueError(
                    f"`schedules[{missing[0]}]` ({schedules[missing[0]]!r}) has no length; pass "
                    "`steps=[...]` with how long each schedule but the last runs."
                )
            lengths = [s.length for s in schedules[:-1]]
        else:
            lengths = list(self.steps)
        if len(lengths) != len(schedules) - 1:
            raise ValueError(
                f"`steps` must have len(schedules) - 1 = {len(schedules) - 1} entries, "
                f"got {len(lengths)}."
            )
        steps = tuple(check_int(f"steps[{i}]", n, 1) for i, n in enumerate(lengths))
        object.__setattr__(self, "schedules", schedules)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "offsets", tuple(itertools.accumulate(steps)))

    @property
    def length(self) -> int | None:
        """Where the last schedule ends, or ``None`` when it is open-ended."""
        last = self.schedules[-1].length
        return None if last is None else (self.offsets[-1] if self.offsets else 0) + last

    def _locate(self, step: int) -> tuple[Schedule, int]:
        """The schedule running at ``step`` and its own step."""
        i = bisect.bisect_right(self.offsets, self._check_step(step))
        return self.schedules[i], step - (self.offsets[i - 1] if i else 0)

    def __call__(self, step: int) -> float:
        schedule, local = self._locate(step)
        return schedule(local)

    def momentum(self, step: int) -> float | None:
        schedule, local = self._locate(step)
        return schedule.momentum(local)
