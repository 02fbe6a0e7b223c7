"""Optimizers and the LR schedule against the fork's `configure_optimizers` (trainer_new.py)."""

from __future__ import annotations

import pytest
import torch
from prodigyopt import Prodigy

from acetune.errors import UsageError
from acetune.training.optim import (
    ADAMW_BETAS,
    FINAL_LR_FRACTION,
    build_lr_scheduler,
    build_optimizer,
    lr_multiplier,
    optimizer_advice,
)


def _params():
    return [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]


def test_adamw_is_the_forks():
    opt = build_optimizer(_params(), "adamw")
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-4, 1e-2, (0.8, 0.9), 1e-8)
    assert ADAMW_BETAS == (0.8, 0.9)



def test_adamw_multi_tensor_step_equals_the_per_tensor_loop():
    """build_optimizer's AdamW takes the multi-tensor (foreach) step; after several steps with the LR schedule,
    weight decay and heavy-tailed gradients its parameters equal those of torch's per-tensor loop bit for bit."""
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(64, 48, generator=g) * 0.02, torch.randn(48, 64, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) * torch.randn(t.shape, generator=g).exp() ** 3 for t in start]
             for _ in range(4)]
    results = []
    for make in (lambda ps: build_optimizer(ps, "adamw", lr=1e-3),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, betas=ADAMW_BETAS, foreach=False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(params)
        scheduler = build_lr_scheduler(opt, optimizer_name="adamw", max_steps=10)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
            scheduler.step()
        results.append(params)
    assert results[0][0].ne(start[0]).any()
    for a, b in zip(*results):
        assert torch.equal(a, b)

def test_prodigy_is_the_forks():
    opt = build_optimizer(_params(), "prodigy", lr=1.0, weight_decay=1e-2)
    assert isinstance(opt, Prodigy)
    group = opt.param_groups[0]
    assert group["use_bias_correction"] is True and group["safeguard_warmup"] is True
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1.0, 1e-2, (0.9, 0.999))  # library betas


def test_unknown_optimizer_and_empty_params():
    with pytest.raises(UsageError, match="unknown optimizer 'sgd'"):
        build_optimizer(_params(), "sgd")
    with pytest.raises(UsageError, match="no trainable parameters"):
        build_optimizer([], "adamw")


# Hand-computed from the fork's lr_lambda with warmup 10, max_steps 10000.
# AdamW: step 5 -> 5/10; step 10 -> 1; step 5005 -> 1 - 4995/9990 = 0.5; >= 10000 -> 0.
# Prodigy: same progress, then m * 0.9 + 0.1: 0.55 at step 5005, 0.1 at and after 10000.
SCHEDULE = [
    (0, 0.0, 0.0),
    (1, 0.1, 0.1),
    (5, 0.5, 0.5),
    (9, 0.9, 0.9),
    (10, 1.0, 1.0),
    (11, 1 - 1 / 9990, (1 - 1 / 9990) * 0.9 + 0.1),
    (5005, 0.5, 0.55),
    (9999, 1 / 9990, 0.9 / 9990 + 0.1),
    (10000, 0.0, 0.1),
    (12000, 0.0, 0.1),
]


@pytest.mark.parametrize("step,adamw,prodigy", SCHEDULE)
def test_lr_multiplier_matches_fork(step, adamw, prodigy):
    assert lr_multiplier(step, 10, 10000, FINAL_LR_FRACTION["adamw"]) == pytest.approx(adamw, abs=1e-12)
    assert lr_multiplier(step, 10, 10000, FINAL_LR_FRACTION["prodigy"]) == pytest.approx(prodigy, abs=1e-12)


def test_lr_multiplier_edge_cases():
    assert lr_multiplier(0, 0, 100) == 1.0  # no warmup: full LR from the first step
    assert lr_multiplier(3, 0, 1) == 0.0  # max_steps 1: max(1, ...) guards the division
    assert lr_multiplier(5, 10, 5) == 0.5  # warmup longer than the run: still warming up


@pytest.mark.parametrize("name,lr", [("adamw", 1e-4), ("prodigy", 1.0)])
def test_scheduler_drives_optimizer_lr(name, lr):
    opt = build_optimizer(_params(), name, lr=lr)
    sched = build_lr_scheduler(opt, warmup_steps=10, max_steps=10000, optimizer_name=name)
    steps, seen = {row[0] for row in SCHEDULE}, {}
    for step in range(10001):  # LambdaLR: after k scheduler.step() calls the LR is lr * f(k)
        if step in steps:
            seen[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    column = 1 if name == "adamw" else 2
    for row in SCHEDULE[:-1]:
        assert seen[row[0]] == pytest.approx(lr * row[column], rel=1e-9, abs=1e-15)


def test_final_fraction_from_optimizer_class_and_override():
    prodigy = build_optimizer(_params(), "prodigy")
    assert build_lr_scheduler(prodigy, 0, 10).lr_lambdas[0].final_fraction == 0.1
    adamw = build_optimizer(_params(), "adamw")
    assert build_lr_scheduler(adamw, 0, 10).lr_lambdas[0].final_fraction == 0.0
    assert build_lr_scheduler(adamw, 0, 10, final_fraction=0.3).lr_lambdas[0](10) == pytest.approx(0.3)
    with pytest.raises(UsageError, match="bad schedule"):
        build_lr_scheduler(adamw, -1, 10)


def test_prodigy_advice_like_the_fork():
    assert len(optimizer_advice("prodigy", 1e-4, 10)) == 2
    assert optimizer_advice("prodigy", 1.0, 0) == []
    assert optimizer_advice("adamw", 1e-4, 10) == []
