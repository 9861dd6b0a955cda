"""The pure schedules against hand-computed values, closed forms and torch's OneCycleLR."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_reg.schedules import (
    Chain,
    ExponentialDecay,
    Knots,
    LinearWarmup,
    OneCycle,
    PiecewiseConstant,
    PolynomialDecay,
    PowerDecay,
    Schedule,
)

# Textbook 1cycle, total_steps=20, max_lr=0.8, worked by hand: start_lr = 0.08,
# final_lr = 8e-5; final_steps = 20 // 10 + 1 = 3, half = (20 - 3) // 2 = 8, so the LR rises
# over steps 0..8 (+0.09 per step), falls over 8..16, then falls to final_lr over 16..20
# (the odd step goes to the final phase: 4 steps of -0.01998); momentum goes
# 0.95 -> 0.85 -> 0.95 by 0.0125 per step, then holds 0.95.
TEXTBOOK_LR = [
    0.08, 0.17, 0.26, 0.35, 0.44, 0.53, 0.62, 0.71, 0.80,
    0.71, 0.62, 0.53, 0.44, 0.35, 0.26, 0.17, 0.08,
    0.06002, 0.04004, 0.02006,
]  # fmt: skip
TEXTBOOK_MOMENTUM = [
    0.95, 0.9375, 0.925, 0.9125, 0.9, 0.8875, 0.875, 0.8625, 0.85,
    0.8625, 0.875, 0.8875, 0.9, 0.9125, 0.925, 0.9375, 0.95,
    0.95, 0.95, 0.95,
]  # fmt: skip


def test_textbook_trace_matches_hand_computed_values() -> None:
    schedule = OneCycle(total_steps=20, max_lr=0.8)
    assert [schedule(k) for k in range(20)] == pytest.approx(TEXTBOOK_LR, abs=1e-12)
    assert [schedule.momentum(k) for k in range(20)] == pytest.approx(TEXTBOOK_MOMENTUM)
    assert schedule(20) == pytest.approx(8e-5)  # final_lr is reached at step total_steps
    for step in (21, 1000):  # then held, no error
        assert schedule(step) == schedule.final_lr == pytest.approx(8e-5)
        assert schedule.momentum(step) == 0.95


def test_textbook_defaults_are_resolved_into_the_fields() -> None:
    schedule = OneCycle(100, 1.0)
    assert schedule.start_lr == 0.1
    assert schedule.final_lr == pytest.approx(1e-4)
    assert schedule.warmup_steps == 44  # (100 - (100 // 10 + 1)) // 2
    assert schedule.final_steps == 12  # 100 - 2 * 44: the odd step goes to the final phase
    assert schedule.knots.steps == (0, 44, 88, 100)
    assert schedule.knots.lrs == (0.1, 1.0, 0.1, schedule.final_lr)
    assert schedule.knots.momenta == (0.95, 0.85, 0.95, 0.95)
    rebuilt = OneCycle(**{f.name: getattr(schedule, f.name) for f in _init_fields(OneCycle)})
    assert rebuilt == schedule
    assert [rebuilt(k) for k in range(101)] == [schedule(k) for k in range(101)]


def test_cos_anneal_is_the_cosine_between_the_same_points() -> None:
    linear, cos = OneCycle(20, 0.8), OneCycle(20, 0.8, anneal="cos")
    for step in (0, 8, 16, 20):  # phase ends agree
        assert cos(step) == pytest.approx(linear(step))
    # Mid-rise (step 4 of 8): both halfway; a quarter in (step 2): (1 - cos(pi/4)) / 2 of the way.
    assert cos(4) == pytest.approx(0.44)
    assert cos(2) == pytest.approx(0.08 + 0.72 * (1 - math.cos(math.pi / 4)) / 2)
    assert cos.momentum(2) == pytest.approx(0.95 - 0.1 * (1 - math.cos(math.pi / 4)) / 2)


def test_two_phase_with_final_steps_zero_descends_to_final_lr() -> None:
    schedule = OneCycle(10, 1.0, final_steps=0, final_lr=0.0)
    # rise 0..5 from 0.1 to 1.0, descent 5..10 from 1.0 to 0.0, momentum back up to 0.95
    expected = [0.1, 0.28, 0.46, 0.64, 0.82, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert [schedule(k) for k in range(11)] == pytest.approx(expected)
    assert schedule.momentum(5) == pytest.approx(0.85)
    assert schedule.momentum(10) == pytest.approx(0.95)
    assert schedule.knots.steps == (0, 5, 10)


def test_explicit_warmup_steps_make_an_asymmetric_cycle() -> None:
    schedule = OneCycle(100, 1.0, warmup_steps=20)
    assert schedule.final_steps == 11  # default total_steps // 10 + 1, kept as given
    assert schedule(20) == 1.0
    assert schedule(89) == pytest.approx(0.1)  # descent over 20..89
    assert schedule(54) == pytest.approx(1.0 - 0.9 * 34 / 69)


def test_without_cycle_momentum_momentum_is_none() -> None:
    schedule = OneCycle(20, 0.8, cycle_momentum=False, min_momentum=0.99, max_momentum=0.5)
    assert schedule.momentum(3) is None
    assert schedule(3) == pytest.approx(0.35)


def _torch_trace(
    optimizer_cls: type[torch.optim.Optimizer], total_steps: int, **kwargs: object
) -> tuple[list[float], list[float]]:
    """LR and momentum that torch's OneCycleLR sets before each of ``total_steps`` steps."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = (
        optimizer_cls([param], lr=0.1, momentum=0.9)  # type: ignore[call-arg]
        if optimizer_cls is torch.optim.SGD
        else optimizer_cls([param], lr=0.1)
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        total_steps=total_steps,
        **kwargs,  # type: ignore[arg-type]
    )
    lrs, momenta = [], []
    group = optimizer.param_groups[0]
    for _ in range(total_steps):
        lrs.append(group["lr"])
        momenta.append(group["momentum"] if "momentum" in group else group["betas"][0])
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    return lrs, momenta


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize(
    ("total_steps", "pct_start"), [(10, 0.3), (17, 0.25), (100, 0.3), (333, 0.45), (1000, 0.1)]
)
def test_from_torch_reproduces_one_cycle_lr_step_for_step(
    optimizer_cls: type[torch.optim.Optimizer],
    three_phase: bool,
    anneal: str,
    total_steps: int,
    pct_start: float,
) -> None:
    kwargs = {
        "max_lr": 0.3,
        "pct_start": pct_start,
        "anneal_strategy": anneal,
        "three_phase": three_phase,
        "div_factor": 20.0,
        "final_div_factor": 100.0,
        "base_momentum": 0.8,
        "max_momentum": 0.9,
    }
    torch_lrs, torch_momenta = _torch_trace(optimizer_cls, total_steps, **kwargs)
    schedule = OneCycle.from_torch(total_steps, **kwargs)  # type: ignore[arg-type]
    # Same phase ends and the same float arithmetic: equal to the last bit.
    assert [schedule(k) for k in range(total_steps)] == torch_lrs
    assert [schedule.momentum(k) for k in range(total_steps)] == torch_momenta
    assert schedule(total_steps - 1) == pytest.approx(0.3 / 20.0 / 100.0)


def test_from_torch_defaults_match_torch_defaults() -> None:
    torch_lrs, torch_momenta = _torch_trace(torch.optim.SGD, 50, max_lr=0.1)
    schedule = OneCycle.from_torch(50, 0.1)
    assert [schedule(k) for k in range(50)] == torch_lrs
    assert [schedule.momentum(k) for k in range(50)] == torch_momenta
    assert schedule.anneal == "cos"
    assert schedule.steps == (0, 14.0, 49)  # two phases: peak at 0.3 * 50 - 1, end at 49
    assert schedule.length == 50


@settings(max_examples=40, deadline=None)
@given(
    total_steps=st.integers(2, 300),
    pct_start=st.floats(0.01, 0.99),
    three_phase=st.booleans(),
    anneal=st.sampled_from(["cos", "linear"]),
)
def test_from_torch_matches_torch_for_any_valid_pct_start(
    total_steps: int, pct_start: float, three_phase: bool, anneal: str
) -> None:
    kwargs = {"max_lr": 1.0, "pct_start": pct_start, "three_phase": three_phase}
    try:
        schedule = OneCycle.from_torch(total_steps, anneal_strategy=anneal, **kwargs)  # type: ignore[arg-type]
    except ValueError as error:  # an empty phase, which torch mishandles; check the reason
        assert "pct_start" in str(error)
        warmup = pct_start * total_steps - 1
        descent_end = 2 * pct_start * total_steps - 2 if three_phase else total_steps - 1
        assert not (0 < warmup < descent_end and (descent_end < total_steps - 1 or not three_phase))
        return
    lrs, momenta = _torch_trace(torch.optim.SGD, total_steps, anneal_strategy=anneal, **kwargs)
    # The same knots and the same float arithmetic: equal to the last bit, three phases included.
    assert [schedule(k) for k in range(total_steps)] == lrs
    assert [schedule.momentum(k) for k in range(total_steps)] == momenta


@st.composite
def one_cycles(draw: st.DrawFn) -> OneCycle:
    """Valid OneCycles: textbook defaults, explicit phases and torch-style ones."""
    total_steps = draw(st.integers(4, 400))
    max_lr = draw(st.floats(1e-5, 10.0))
    start_lr = max_lr * draw(st.floats(0.0, 1.0))
    final_lr = start_lr * draw(st.floats(0.0, 1.0))
    final_steps = draw(st.none() | st.integers(0, total_steps - 2))
    limit = total_steps - (total_steps // 10 + 1 if final_steps is None else final_steps)
    warmup = draw(st.none() | st.integers(1, limit - 1))  # limit >= 2: both phases fit
    min_momentum = draw(st.floats(0.0, 0.99))
    return OneCycle(
        total_steps,
        max_lr,
        start_lr=start_lr,
        final_lr=final_lr,
        final_steps=final_steps,
        warmup_steps=warmup,
        anneal=draw(st.sampled_from(["linear", "cos"])),
        min_momentum=min_momentum,
        max_momentum=draw(st.floats(min_momentum, 0.99)),
    )


def _trace(schedule: OneCycle) -> tuple[list[float], list[float]]:
    steps = range(schedule.total_steps + 3)
    return [schedule(k) for k in steps], [schedule.momentum(k) or 0.0 for k in steps]


@settings(max_examples=60, deadline=None)
@given(one_cycles())
def test_one_cycle_lr_stays_within_its_values(schedule: OneCycle) -> None:
    lrs, momenta = _trace(schedule)
    tol = 1e-12 * schedule.max_lr
    assert all(schedule.final_lr - tol <= lr <= schedule.max_lr + tol for lr in lrs)
    assert all(schedule.min_momentum - 1e-12 <= m <= schedule.max_momentum + 1e-12 for m in momenta)


@settings(max_examples=60, deadline=None)
@given(one_cycles())
def test_one_cycle_phases_are_monotone_and_momentum_moves_inversely(schedule: OneCycle) -> None:
    knots = schedule.knots
    assert knots.momenta is not None
    for i in range(len(knots.steps) - 1):
        start, end = knots.steps[i], knots.steps[i + 1]
        steps = [k for k in range(schedule.total_steps) if start <= k <= end]
        lrs = [schedule(k) for k in steps]
        momenta = [schedule.momentum(k) or 0.0 for k in steps]
        lr_sign = math.copysign(1.0, knots.lrs[i + 1] - knots.lrs[i])
        tol = 1e-12 * schedule.max_lr
        for (lr0, m0), (lr1, m1) in itertools.pairwise(zip(lrs, momenta, strict=True)):
            assert (lr1 - lr0) * lr_sign >= -tol  # monotone towards the phase's end value
            assert (lr1 - lr0) * (m1 - m0) <= 1e-12  # momentum never moves with the LR
        if knots.momenta[i] == knots.momenta[i + 1]:
            assert momenta == pytest.approx([knots.momenta[i]] * len(momenta))


@settings(max_examples=60, deadline=None)
@given(one_cycles())
def test_one_cycle_takes_its_knot_values_at_its_knots(schedule: OneCycle) -> None:
    knots = schedule.knots
    assert knots.momenta is not None
    assert knots.steps[0] == 0 and knots.steps[-1] == schedule.total_steps
    for step, lr, momentum in zip(knots.steps, knots.lrs, knots.momenta, strict=True):
        assert schedule(int(step)) == pytest.approx(lr)
        assert schedule.momentum(int(step)) == pytest.approx(momentum)
    assert schedule(0) == pytest.approx(schedule.start_lr)
    assert schedule(int(knots.steps[1])) == pytest.approx(schedule.max_lr)


@settings(max_examples=60, deadline=None)
@given(one_cycles(), st.integers(0, 10_000))
def test_one_cycle_holds_the_last_value_after_the_end(schedule: OneCycle, extra: int) -> None:
    step = schedule.total_steps + extra
    assert schedule(step) == pytest.approx(schedule.final_lr, abs=1e-15)
    assert schedule.momentum(step) == pytest.approx(schedule.max_momentum)
    assert schedule(step + 1) == schedule.final_lr  # strictly after end_step: exactly held
    assert schedule.momentum(step + 1) == schedule.max_momentum


@pytest.mark.parametrize("step", [0, 1, 7, 1000, 12345])
def test_exponential_decay_closed_form(step: int) -> None:
    assert ExponentialDecay(0.01, 1000)(step) == pytest.approx(0.01 * 0.1 ** (step / 1000))
    assert ExponentialDecay(0.5, 20, rate=0.5)(step) == pytest.approx(0.5 * 0.5 ** (step / 20))
    assert ExponentialDecay(0.01, 1000)(2000) == pytest.approx(1e-4)


@pytest.mark.parametrize("step", [0, 1, 7, 1000, 12345])
def test_power_decay_closed_form(step: int) -> None:
    assert PowerDecay(0.01, 1000)(step) == pytest.approx(0.01 / (1 + step / 1000))
    assert PowerDecay(0.2, 50, c=0.5)(step) == pytest.approx(0.2 / math.sqrt(1 + step / 50))
    assert PowerDecay(0.01, 1000)(1000) == pytest.approx(0.005)
    assert PowerDecay(0.3, 10, c=0.0)(step) == 0.3


@pytest.mark.parametrize("step", [0, 1, 9, 10, 11, 29, 30, 12345])
def test_staircase_decays_follow_keras_formulas(step: int) -> None:
    # Keras' ExponentialDecay(staircase=True): lr0 * rate ** floor(step / decay_steps);
    # InverseTimeDecay(staircase=True): lr0 / (1 + decay_rate * floor(step / decay_steps)).
    assert ExponentialDecay(0.1, 10, rate=0.5, staircase=True)(step) == pytest.approx(
        0.1 * 0.5 ** math.floor(step / 10), rel=1e-12
    )
    assert PowerDecay(0.1, 10, staircase=True)(step) == pytest.approx(
        0.1 / (1 + math.floor(step / 10)), rel=1e-12
    )
    assert PowerDecay(0.1, 2.5, c=2.0, staircase=True)(step) == pytest.approx(
        0.1 / (1 + math.floor(step / 2.5)) ** 2, rel=1e-12
    )


@pytest.mark.parametrize(("s", "step"), [(1.1, 11), (0.7, 7), (0.1, 3), (2.2, 22)])
def test_staircase_boundary_exactly_on_a_step_starts_the_next_period(s: float, step: int) -> None:
    # step / s is a whole number of periods: Keras' floor(step / decay_steps). Python's
    # 11 // 1.1 is 9.0 (1.1 is stored a little above 11/10), a whole period short.
    periods = round(step / s)
    assert ExponentialDecay(1.0, s, rate=0.5, staircase=True)(step) == 0.5**periods
    assert PowerDecay(1.0, s, staircase=True)(step) == 1.0 / (1 + periods)


def test_staircase_exponential_decay_is_torchs_step_lr() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    schedule = ExponentialDecay(0.1, 4, rate=0.5, staircase=True)
    for k in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(schedule(k), rel=1e-12)
        opt.step()
        step_lr.step()


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_polynomial_decay_is_torchs_polynomial_lr(power: float) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    poly = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=power)
    schedule = PolynomialDecay(10, 0.1, power=power)
    for k in range(15):
        assert opt.param_groups[0]["lr"] == pytest.approx(schedule(k), rel=1e-9, abs=1e-15)
        opt.step()
        poly.step()
    assert schedule.length == 10 and schedule(10) == 0.0


@pytest.mark.parametrize("step", [0, 1, 37, 99, 100, 500])
def test_polynomial_decay_follows_keras_formula(step: int) -> None:
    # Keras' PolynomialDecay(cycle=False):
    # (initial - end) * (1 - min(step, decay_steps) / decay_steps) ** power + end
    expected = (0.1 - 0.001) * (1 - min(step, 100) / 100) ** 1.5 + 0.001
    assert PolynomialDecay(100, 0.1, final_lr=0.001, power=1.5)(step) == pytest.approx(
        expected, rel=1e-12
    )


def test_get_config_is_plain_data_with_nested_schedules() -> None:
    chain = Chain([LinearWarmup(3, 0.1), ExponentialDecay(0.1, 4, staircase=True)])
    assert chain.get_config() == {
        "class": "Chain",
        "schedules": [
            {"class": "LinearWarmup", "steps": 3, "lr": 0.1, "start_lr": 0.0},
            {"class": "ExponentialDecay", "lr0": 0.1, "s": 4.0, "rate": 0.1, "staircase": True},
        ],
        "steps": (3,),
    }
    assert OneCycle(100, 0.1).get_config()["final_steps"] == 12  # resolved defaults
    assert ExponentialDecay(0.1, 4).get_config() != ExponentialDecay(0.2, 4).get_config()


def test_one_cycle_check_arguments_without_total_steps() -> None:
    assert OneCycle.check_arguments(None) == (None, None, None, 0.95, 0.85)
    assert OneCycle.check_arguments(None, start_lr=0.5)[2] == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="start_lr"):
        OneCycle.check_arguments(0.1, start_lr=0.2)
    with pytest.raises(ValueError, match="final_lr"):
        OneCycle.check_arguments(None, start_lr=0.1, final_lr=0.2)
    with pytest.raises(TypeError, match="warmup_steps"):
        OneCycle.check_arguments(0.1, warmup_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_momentum"):
        OneCycle.check_arguments(0.1, min_momentum=0.99)


def test_piecewise_constant_changes_at_the_boundary_step() -> None:
    schedule = PiecewiseConstant(boundaries=[5, 8], values=[0.1, 0.01, 0.001])
    expected = [0.1] * 5 + [0.01] * 3 + [0.001] * 4
    assert [schedule(k) for k in range(12)] == expected
    assert schedule.boundaries == (5, 8)
    assert schedule.values == (0.1, 0.01, 0.001)
    assert PiecewiseConstant([], [0.3])(99) == 0.3


def test_schedules_are_frozen_hashable_picklable_with_a_readable_repr() -> None:
    schedules: list[Schedule] = [
        OneCycle(100, 0.1),
        ExponentialDecay(0.01, 10),
        PowerDecay(0.01, 10, c=2),
        PiecewiseConstant([3], [0.1, 0.2]),
    ]
    for schedule in schedules:
        assert hash(schedule) == hash(dataclasses.replace(schedule))
        assert pickle.loads(pickle.dumps(schedule)) == schedule
        assert schedule.as_schedule(5) is schedule
        with pytest.raises(dataclasses.FrozenInstanceError):
            schedule.lr0 = 1.0  # type: ignore[attr-defined]
    assert len(set([*schedules, OneCycle(100, 0.1)])) == 4
    assert repr(PowerDecay(0.01, 10)) == "PowerDecay(lr0=0.01, s=10.0, c=1.0, staircase=False)"
    assert repr(OneCycle(20, 0.8)).startswith(
        "OneCycle(total_steps=20, max_lr=0.8, start_lr=0.08, final_lr=8e-05, final_steps=4,"
    )
    assert "knots" not in repr(OneCycle(20, 0.8))
    assert ExponentialDecay(0.01, 10).momentum(3) is None


@pytest.mark.parametrize(
    "schedule", [OneCycle(20, 0.8), ExponentialDecay(0.1, 10), PiecewiseConstant([2], [1, 2])]
)
@pytest.mark.parametrize(
    ("step", "error"), [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError)]
)
def test_bad_steps_raise(schedule: Schedule, step: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="`step`"):
        schedule(step)  # type: ignore[arg-type]
    with pytest.raises(error, match="`step`"):
        schedule.momentum(step)  # type: ignore[arg-type]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"total_steps": 0, "max_lr": 0.1}, ValueError, "total_steps"),
        ({"total_steps": -5, "max_lr": 0.1}, ValueError, "total_steps"),
        ({"total_steps": 10.0, "max_lr": 0.1}, TypeError, "total_steps"),
        ({"total_steps": True, "max_lr": 0.1}, TypeError, "total_steps"),
        ({"total_steps": 2, "max_lr": 0.1}, ValueError, "warmup_steps"),
        ({"total_steps": 10, "max_lr": -1.0}, ValueError, "max_lr"),
        ({"total_steps": 10, "max_lr": 0.0}, ValueError, "max_lr"),
        ({"total_steps": 10, "max_lr": NAN}, ValueError, "max_lr"),
        ({"total_steps": 10, "max_lr": INF}, ValueError, "max_lr"),
        ({"total_steps": 10, "max_lr": True}, TypeError, "max_lr"),
        ({"total_steps": 10, "max_lr": "0.1"}, TypeError, "max_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "start_lr": 0.2}, ValueError, "start_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "start_lr": -0.01}, ValueError, "start_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "start_lr": NAN}, ValueError, "start_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "final_lr": 0.02}, ValueError, "final_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "final_lr": -1e-9}, ValueError, "final_lr"),
        ({"total_steps": 10, "max_lr": 0.1, "final_steps": 10}, ValueError, "final_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "final_steps": -1}, ValueError, "final_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "final_steps": 9}, ValueError, "warmup_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "warmup_steps": 0}, ValueError, "warmup_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "warmup_steps": 8}, ValueError, "warmup_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "warmup_steps": 2.5}, TypeError, "warmup_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "final_steps": 1.0}, TypeError, "final_steps"),
        ({"total_steps": 10, "max_lr": 0.1, "anneal": "exp"}, ValueError, "anneal"),
        ({"total_steps": 10, "max_lr": 0.1, "cycle_momentum": 1}, TypeError, "cycle_momentum"),
        ({"total_steps": 10, "max_lr": 0.1, "max_momentum": 1.0}, ValueError, "max_momentum"),
        ({"total_steps": 10, "max_lr": 0.1, "min_momentum": -0.1}, ValueError, "min_momentum"),
        ({"total_steps": 10, "max_lr": 0.1, "min_momentum": 0.99}, ValueError, "min_momentum"),
    ],
)
def test_one_cycle_rejects_bad_hyperparameters(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=f"`{match}`.*got"):
        OneCycle(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pct_start": 0.0}, "pct_start"),
        ({"pct_start": 1.0}, "pct_start"),
        ({"pct_start": 0.05}, "pct_start"),  # 0.05 * 20 - 1 = 0: empty rise
        ({"pct_start": 0.6, "three_phase": True}, "pct_start"),  # 22 > 19: no final phase
        ({"div_factor": 0.5}, "div_factor"),
        ({"final_div_factor": NAN}, "final_div_factor"),
        ({"anneal_strategy": "linear_"}, "anneal_strategy"),
        ({"base_momentum": 0.99}, "base_momentum"),
        ({"max_momentum": 1.5}, "max_momentum"),
        ({"max_momentum": NAN}, "max_momentum"),
        ({"max_lr": -0.1}, "max_lr"),
    ],
)
def test_from_torch_rejects_bad_hyperparameters(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"total_steps": 20, "max_lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=f"`{match}`.*got"):
        OneCycle.from_torch(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"three_phase": "False"}, "three_phase"),  # a truthy string made three phases
        ({"cycle_momentum": 1}, "cycle_momentum"),
        ({"max_momentum": "0.95"}, "max_momentum"),
    ],
)
def test_from_torch_rejects_wrong_types_by_name(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=f"`{match}`.*got"):
        OneCycle.from_torch(total_steps=20, max_lr=0.1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: ExponentialDecay(-0.1, 10), ValueError, "lr0"),
        (lambda: ExponentialDecay(NAN, 10), ValueError, "lr0"),
        (lambda: ExponentialDecay(0.1, 0), ValueError, "`s`"),
        (lambda: ExponentialDecay(0.1, -3), ValueError, "`s`"),
        (lambda: ExponentialDecay(0.1, INF), ValueError, "`s`"),
        (lambda: ExponentialDecay(0.1, 10, rate=0.0), ValueError, "rate"),
        (lambda: ExponentialDecay(0.1, 10, rate=1.5), ValueError, "rate"),
        (lambda: ExponentialDecay(0.1, True), TypeError, "`s`"),
        (lambda: PowerDecay(0.0, 10), ValueError, "lr0"),
        (lambda: PowerDecay(INF, 10), ValueError, "lr0"),
        (lambda: PowerDecay(0.1, 0.0), ValueError, "`s`"),
        (lambda: PowerDecay(0.1, 10, c=-1), ValueError, "`c`"),
        (lambda: PowerDecay(0.1, 10, staircase=1), TypeError, "staircase"),
        (lambda: ExponentialDecay(0.1, 10, staircase="yes"), TypeError, "staircase"),
        (lambda: PolynomialDecay(0, 0.1), ValueError, "steps"),
        (lambda: PolynomialDecay(10, 0.1, final_lr=0.2), ValueError, "final_lr"),
        (lambda: PolynomialDecay(10, 0.1, power=0.0), ValueError, "power"),
        (lambda: PiecewiseConstant([5], [0.1]), ValueError, "values"),
        (lambda: PiecewiseConstant([5, 3], [0.1, 0.2, 0.3]), ValueError, "boundaries"),
        (lambda: PiecewiseConstant([5, 5], [0.1, 0.2, 0.3]), ValueError, "boundaries"),
        (lambda: PiecewiseConstant([0], [0.1, 0.2]), ValueError, r"boundaries\[0\]"),
        (lambda: PiecewiseConstant([2.5], [0.1, 0.2]), TypeError, r"boundaries\[0\]"),
        (lambda: PiecewiseConstant([2], [0.1, -0.2]), ValueError, r"values\[1\]"),
        (lambda: PiecewiseConstant([2], [0.1, NAN]), ValueError, r"values\[1\]"),
    ],
)
def test_decay_schedules_reject_bad_hyperparameters(
    factory: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=f"{match}.*got"):
        factory()  # type: ignore[operator]


def _init_fields(cls: type) -> list[dataclasses.Field[object]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def test_knots_interpolate_like_torch_and_hold_the_last_value() -> None:
    knots = Knots([0, 4, 8.5], [0.0, 0.4, 0.1], momenta=[0.9, 0.8, 0.9], anneal="cos")
    assert knots(2) == pytest.approx(0.2)
    assert knots(6) == pytest.approx(0.1 + 0.3 / 2 * (math.cos(math.pi * 2 / 4.5) + 1))
    assert knots(9) == knots(100) == 0.1 and knots.momentum(50) == 0.9
    assert knots.length == 9 and Knots([0, 3], [1.0, 0.0], total_steps=4).length == 4
    assert Knots([0, 3], [1.0, 0.0]).momentum(1) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": [0], "lrs": [0.1]}, ValueError, "`steps`"),
        ({"steps": [1, 2], "lrs": [0.1, 0.2]}, ValueError, "`steps`"),
        ({"steps": [0, 2, 2], "lrs": [0.1, 0.2, 0.3]}, ValueError, "`steps`"),
        ({"steps": [0, NAN], "lrs": [0.1, 0.2]}, ValueError, r"`steps\[1\]`"),
        ({"steps": [0, 2], "lrs": [0.1]}, ValueError, "`lrs`"),
        ({"steps": [0, 2], "lrs": [0.1, -0.2]}, ValueError, r"`lrs\[1\]`"),
        ({"steps": [0, 2], "lrs": [0.1, 0.2], "momenta": [0.9, 1.0]}, ValueError, "momenta"),
        ({"steps": [0, 2], "lrs": [0.1, 0.2], "momenta": [0.9]}, ValueError, "`momenta`"),
        ({"steps": [0, 2], "lrs": [0.1, 0.2], "anneal": "exp"}, ValueError, "`anneal`"),
        ({"steps": [0, 4], "lrs": [0.1, 0.2], "total_steps": 2}, ValueError, "`total_steps`"),
        ({"steps": [0, True], "lrs": [0.1, 0.2]}, TypeError, r"`steps\[1\]`"),
    ],
)
def test_knots_reject_bad_values(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=f"{match}.*got"):
        Knots(**kwargs)  # type: ignore[arg-type]
