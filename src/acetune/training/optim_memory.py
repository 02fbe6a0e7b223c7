"""Optimizer-state memory levers: 8-bit AdamW moments and the optimizer state kept in host RAM.

`adamw8bit` is bitsandbytes' `AdamW8bit` (it runs on CPU too): the two moments are stored as 8-bit
codes of a dynamic (signed/unsigned) quantization map, one fp32 absmax per block of 256 values; the
update itself is computed in fp32 from the dequantized moments. Tensors under 4096 values keep fp32
moments. What changes numerically is only the rounding of the stored moments (tests/training/
test_optim_memory.py bounds the loss-curve difference against fp32 AdamW on the tiny model).

`OffloadedOptimizer` runs any optimizer on host copies of the trained tensors: each step copies the
(already clipped) gradients to the host, steps there, and copies the new values back. The state
never touches the device. The arithmetic is the same as on the device, on the CPU; when the device
is the CPU itself there is nothing to offload and the wrapped optimizer steps the tensors directly.
"""

from __future__ import annotations

import logging

import torch

ADAMW8BIT_MIN_SIZE = 4096  # bitsandbytes' default: smaller tensors keep fp32 moments


def adamw8bit(params, *, lr: float, weight_decay: float, betas, eps: float | None):
    """bitsandbytes AdamW8bit with the fork's AdamW hyper-parameters."""
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops"):  # its CPU build warns about optional kernels
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        from acetune.errors import UsageError

        raise UsageError("--optimizer adamw8bit needs the bitsandbytes package",
                         fix="pip install bitsandbytes (or use --optimizer adamw)") from err
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                               eps=1e-8 if eps is None else eps, min_8bit_size=ADAMW8BIT_MIN_SIZE)


class OffloadedOptimizer(torch.optim.Optimizer):
    """`inner` built on host copies of `params`; steps on the host, then copies the values back.

    Subclassed per wrapped class under the same name (`offloaded`), so checkpoints record "AdamW"
    and stay interchangeable with runs without offload."""

    def __init__(self, params: list[torch.nn.Parameter], build, host: torch.device | str = "cpu",
                 force_copy: bool = False):
        host = torch.device(host)
        self.device_params = list(params)
        self.host_params = [p if p.device == host and not force_copy else
                            torch.nn.Parameter(p.detach().to(host, copy=True)) for p in self.device_params]
        self.inner = build(self.host_params)
        # share the inner optimizer's groups and state: LambdaLR and checkpoints read these
        self.defaults, self.param_groups, self.state = self.inner.defaults, self.inner.param_groups, self.inner.state
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        self._zero_grad_profile_name = "OffloadedOptimizer.zero_grad"

    @torch.no_grad()
    def step(self, closure=None):
        for d, h in zip(self.device_params, self.host_params):
            if h is not d:
                h.grad = None if d.grad is None else d.grad.to(h.device, h.dtype)
        loss = self.inner.step(closure)
        for d, h in zip(self.device_params, self.host_params):
            if h is not d:
                d.copy_(h, non_blocking=True)
                h.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for p in self.device_params:
            p.grad = None if set_to_none else (p.grad.zero_() if p.grad is not None else None)
        self.inner.zero_grad(set_to_none)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state_dict):
        self.inner.load_state_dict(state_dict)
        self.param_groups, self.state = self.inner.param_groups, self.inner.state
        with torch.no_grad():
            for d, h in zip(self.device_params, self.host_params):
                if h is not d:  # the host copy follows the (resumed) device values
                    h.copy_(d)


def offloaded(params, build, **kwargs) -> OffloadedOptimizer:
    """An `OffloadedOptimizer` whose class name is the wrapped optimizer's (see the class docstring)."""
    probe = build([torch.nn.Parameter(torch.zeros(1))])
    cls = type(type(probe).__name__, (OffloadedOptimizer,), {"__doc__": OffloadedOptimizer.__doc__})
    return cls(params, build, **kwargs)
