"""Gradient checkpointing of all, some or none of a transformer's blocks (`--gradient_checkpointing`).

Both families check their modules' `gradient_checkpointing` flag and call `_gradient_checkpointing_func`
(diffusers' `ModelMixin.enable_gradient_checkpointing` sets both). Partial checkpointing passes a function
that checkpoints every module except the blocks it was told to run normally, so the v1 lyric encoder
and SSL projectors stay checkpointed as with "on". A checkpointed block's recompute gives the same
numbers as its first run (same ops, same inputs), so the loss and gradients do not change.

Two further levers, also exact: `fine` (v1) checkpoints the parts of each checkpointed block again inside its
recompute (`LinearTransformerBlock.checkpoint_inside`), and `offload_inputs` keeps the inputs a checkpointed
block saves in host RAM (`torch.autograd.graph.save_on_cpu`) until its backward needs them.
"""

from __future__ import annotations

import contextlib

import torch

MODES = ("auto", "on", "fine", "off")
ALIASES = {"true": "on", "false": "off", True: "on", False: "off"}


def normalise_mode(value) -> str:
    """auto/on/off, with true/false (old configs, `--gradient_checkpointing` as a switch) as on/off."""
    value = ALIASES.get(value.lower() if isinstance(value, str) else value, value)
    return value.lower() if isinstance(value, str) else value


def checkpoint_all_but(skip: set, offload_inputs: bool = False):
    """A `_gradient_checkpointing_func` that runs the modules in `skip` normally and checkpoints the rest
    (with `offload_inputs`, what a checkpointed module saves, its inputs, goes to host RAM)."""
    def run(module, *args, **kwargs):
        target = getattr(module, "__self__", module)  # diffusers passes `block.__call__`, v1 the block
        if target in skip:
            return module(*args, **kwargs)
        call = module if hasattr(module, "__self__") else module.__call__
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if offload_inputs \
                else contextlib.nullcontext():
            return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False, **kwargs)
    return run


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks: v1 `transformer_blocks`, 1.5 `layers`."""
    blocks = getattr(model, "transformer_blocks", None)
    return blocks if blocks is not None else model.layers


def apply_checkpointing(model: torch.nn.Module, checkpointed: int, *, inside: bool = False,
                        offload_inputs: bool = False) -> None:
    """Checkpoint the first `checkpointed` blocks (all of them: the model's own setting; 0: off); `inside`:
    their parts too (v1 blocks only); `offload_inputs`: their saved inputs in host RAM."""
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        if hasattr(block, "checkpoint_inside"):
            block.checkpoint_inside = inside and i < checkpointed
        elif inside:
            raise ValueError("checkpointing inside blocks needs ACE-Step v1 blocks")
    if checkpointed <= 0:
        if getattr(model, "gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        return
    if checkpointed >= len(blocks) and not offload_inputs:
        model.enable_gradient_checkpointing()
        return
    model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_all_but(
        set(blocks[checkpointed:]), offload_inputs))
