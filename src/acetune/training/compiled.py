"""`--compile`: torch.compile of the transformer's blocks, in place.

Each block gets `nn.Module.compile()`, which keeps the module tree and every parameter name (no
`_orig_mod.` prefix), so peft's LoRA layers, state-dict and LoRA key names, checkpoints and
gradient checkpointing (which calls the block, hence the compiled forward) are unchanged. Only the
repeated blocks are compiled: they are where the time goes, and one compiled graph serves them all.
ACE-Step v1 only for now (see `compile_blocks`). The first steps are slow (compilation; again when a new audio length appears, then shapes are
treated as dynamic); needs a C++ compiler on CPU (Inductor).
"""

from __future__ import annotations

import torch

# where each family keeps its repeated blocks: v1 `ACEStepTransformer2DModel`, 1.5 `AceStepTransformer1DModel`
BLOCK_LISTS = ("transformer_blocks", "layers")


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a v1 or 1.5 transformer (through a peft wrapper too); [] when none is found."""
    for module in model.modules():
        for name in BLOCK_LISTS:
            blocks = getattr(module, name, None)
            if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
                return list(blocks)
    return []


def compile_blocks(model: torch.nn.Module, *, allow_15: bool = False, **options) -> int:
    """Compile every block of `model` in place (`torch.compile` options pass through); returns how many.

    Refused for the ACE-Step 1.5 DiT (UsageError): with its blocks compiled under gradient checkpointing
    and a LoRA, the LoRA gradients of the first self-attention differed from eager by ~10% in
    tests/models/v15/test_speed_levers_v15.py (the forward agreed). `allow_15` runs it anyway (that test).
    """
    from acetune.errors import UsageError

    if not allow_15 and not any(isinstance(getattr(m, "transformer_blocks", None), torch.nn.ModuleList)
                                for m in model.modules()):
        raise UsageError("--compile is available for ACE-Step v1 only (on the 1.5 DiT the compiled gradients "
                         "do not match eager yet)", fix="drop --compile")
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def uncompile_blocks(model: torch.nn.Module) -> int:
    """Undo `compile_blocks` (the blocks run eagerly again; used to A/B the lever in one process)."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block._compiled_call_impl = None
    return len(blocks)
