"""`--compile`: torch.compile of the transformer's blocks, in place.

Each block gets `nn.Module.compile()`, which keeps the module tree and every parameter name (no
`_orig_mod.` prefix), so peft's LoRA layers, state-dict and LoRA key names, checkpoints and
gradient checkpointing (which calls the block, hence the compiled forward) are unchanged. Only the
repeated blocks are compiled: they are where the time goes, and one compiled graph serves them all.
The first steps are slow (compilation; again when a new audio length appears, then shapes are
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


def compile_blocks(model: torch.nn.Module, **options) -> int:
    """Compile every block of `model` in place (`torch.compile` options pass through); returns how many."""
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
