"""The analytic peak memory of a training step, and the checkpointing choice a memory budget implies.

One source of truth: `acetune train` (the start summary, `--gradient_checkpointing auto
--memory_budget_gb N`), `benchmarks/train.py --analytic` and `benchmarks/full_finetune.py` all call it.

peak = base weights + trainable params + their grads + optimizer states + batch
     + what the forward saves (per block: its input when checkpointed, everything otherwise)
     + the largest backward transient (one block's recompute + its gradients in flight, or the SSL heads';
       with `--gradient_checkpointing fine` the largest of the block's parts)
     + workspace (CUDA context and library workspaces, which torch does not count; 0 for the tables)

LoRA grads held in bf16 (`training.lean_grads`) count 2 bytes each; `--optimizer_offload` and
`--activation_offload` move the optimizer states and the checkpointed block inputs to host RAM.

Weights and trainable state are counted exactly from the model; activations come from
`training.memory_trace` (meta-device tracing of the real forward, nothing computed). The estimate
is the device's peak: with `--optimizer_offload` the optimizer states (and the fp32 master of bf16
weights) live in host RAM instead and are listed apart. Checked against measured CPU peaks in
tests/training/test_memory.py (tiny) and `benchmarks/train.py --check_analytic` (medium).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

GB = 1e9
BNB_BLOCK = 256  # bitsandbytes' 8-bit optimizers: one fp32 absmax per 256 values
BNB_MIN_8BIT = 4096  # ... and tensors smaller than this keep 32-bit states
CUDA_WORKSPACE = int(0.5 * GB)  # CUDA context + cuBLAS/cuDNN workspaces, outside torch's allocator


def optimizer_state_bytes(params, name: str) -> int:
    """Bytes of the optimizer state for `params` (tensors or shapes with a dtype) after the first step."""
    total = 0
    for p in params:
        n, item = p.numel(), p.element_size()
        if name == "adamw":
            total += 2 * n * item  # exp_avg, exp_avg_sq in the parameter's dtype
        elif name == "adamw8bit":
            total += 2 * (n + 4 * math.ceil(n / BNB_BLOCK)) + 2 * 256 * 4 if n >= BNB_MIN_8BIT else 2 * n * 4
        elif name == "adafactor":  # no first moment; row and column second moments for matrices, fp32
            total += (p.shape[0] + n // p.shape[0]) * 4 if p.dim() >= 2 else n * 4
        elif name == "prodigy":  # exp_avg, exp_avg_sq, s, p0
            total += 4 * n * item
        else:
            raise ValueError(f"unknown optimizer {name!r}")
    return total


def int8_weight_bytes(blocks: torch.nn.Module) -> tuple[int, int]:
    """(bf16 bytes, int8 bytes) of what `--int8` quantizes in `blocks`: every frozen Linear and kernel-1
    Conv1d weight -> 1 byte per value + one bf16 scale per output row."""
    bf16 = int8 = 0
    for m in blocks.modules():
        if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv1d) and m.kernel_size == (1,)
                                              and m.groups == 1):
            if not m.weight.requires_grad:
                bf16 += m.weight.numel() * 2
                int8 += m.weight.numel() + m.weight.shape[0] * 2
    return bf16, int8


@dataclass
class Peak:
    """A peak estimate: device terms (bytes, in order) and what lives in host RAM instead."""

    terms: dict[str, int]
    host: dict[str, int] = field(default_factory=dict)
    checkpointed: int = 0
    blocks: int = 0
    inside: bool = False  # the checkpointed blocks' parts checkpointed too (`--gradient_checkpointing fine`)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def rows(self) -> list[tuple[str, float]]:
        """[(term, GB)] including the total and, when there is any, the host-side state."""
        out = [(k, v / GB) for k, v in self.terms.items()] + [("total", self.total / GB)]
        return out + [(f"(host RAM, not in the total: {k})", v / GB) for k, v in self.host.items()]


@dataclass
class Static:
    """The length-independent part: weights and trainable state (bytes)."""

    weights: int  # frozen weights as resident (bf16, or int8 with --int8)
    trainable: int  # trainable parameters (LoRA, or the weights of a full fine-tune)
    grads: int
    states: int
    master: int = 0  # fp32 master copy kept apart from bf16 compute weights (optimizer offload)
    offload: bool = False
    label: str = "LoRA"


def static_terms(model: torch.nn.Module, trainable: list, optimizer: str, *, int8: bool = False,
                 grad_dtype: torch.dtype | None = None, offload: bool = False, label: str = "LoRA") -> Static:
    """Weights and trainable state of `model` (meta or real) whose `trainable` tensors the optimizer owns."""
    from acetune.training.block_checkpointing import transformer_blocks

    ids = {id(p) for p in trainable}
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in ids)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())
    if int8:
        bf16, q = int8_weight_bytes(transformer_blocks(model))
        frozen += q - bf16
    params = sum(p.numel() * p.element_size() for p in trainable)
    grads = sum(p.numel() * (torch.empty(0, dtype=grad_dtype).element_size() if grad_dtype else p.element_size())
                for p in trainable)
    return Static(weights=frozen, trainable=params, grads=grads, states=optimizer_state_bytes(trainable, optimizer),
                  offload=offload, label=label)


def estimate(static: Static, profile, checkpointed: int | None = None, workspace: int = 0, *, inside: bool = False,
             offload_inputs: bool = False) -> Peak:
    """The peak with `checkpointed` blocks checkpointed (None: all); `inside`: their parts too (v1);
    `offload_inputs`: the checkpointed blocks' saved inputs in host RAM (`--activation_offload`)."""
    n = profile.blocks
    k = n if checkpointed is None else max(0, min(n, checkpointed))
    inside = inside and k > 0 and profile.block_inside > 0
    terms = {"base weights": static.weights, f"{static.label} params": static.trainable,
             f"{static.label} grads": static.grads}
    host = {}
    if static.offload:
        host["optimizer states"] = static.states
    else:
        terms["optimizer states"] = static.states
    terms["batch"] = profile.batch
    saved = profile.saved(k)
    if offload_inputs and k:
        host["checkpointed block inputs"] = k * profile.block_checkpointed
        saved -= host["checkpointed block inputs"]
    terms[f"activations saved ({k} of {n} blocks checkpointed{', inside too' if inside else ''})"] = saved
    terms["backward transient (recompute + grads in flight)"] = profile.transient(k, inside)
    if workspace:
        terms["workspace (CUDA context, library workspaces)"] = workspace
    return Peak(terms=terms, host=host, checkpointed=k, blocks=n, inside=inside)


def choose_checkpointed(static: Static, profile, budget_bytes: float, workspace: int = 0,
                        offload_inputs: bool = False, inside_allowed: bool = True) -> tuple[Peak, bool]:
    """The fewest checkpointed blocks whose peak fits `budget_bytes` (fewer recomputes = faster steps), then
    every block with its parts checkpointed too (v1: one more forward of most of each block).

    Returns (peak, fits); when nothing fits, the lowest peak with fits False.
    (From 1 block on, each further checkpointed block lowers the peak; the first, 0 -> 1, adds the
    recompute transient, so on a 2-block toy model 1 can be above 0.)"""
    candidates = [estimate(static, profile, k, workspace, offload_inputs=offload_inputs)
                  for k in range(profile.blocks + 1)]
    if profile.block_inside and inside_allowed:
        candidates.append(estimate(static, profile, None, workspace, inside=True, offload_inputs=offload_inputs))
    for peak in candidates:
        if peak.total <= budget_bytes:
            return peak, True
    return min(candidates[1:] or candidates, key=lambda p: p.total), False


# ---------------------------------------------------------------------------------------------
# Meta copies of a run's model, for the start summary and the budget policy
# ---------------------------------------------------------------------------------------------


def meta_copy(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The same architecture on the meta device (no memory), in the model's dtype, with what the run
    dropped dropped too (v1: unused projections, a freed lyric path or SSL heads)."""
    with torch.device("meta"):
        clone = type(model).from_config(dict(model.config))
    if hasattr(clone, "drop_unused_projections") and hasattr(model, "transformer_blocks"):
        clone.drop_unused_projections()
    for name in ("lyric_embs", "lyric_encoder", "lyric_proj"):
        if hasattr(clone, name) and getattr(model, name, None) is None:
            setattr(clone, name, None)
    if hasattr(clone, "projectors") and len(getattr(model, "projectors", ())) == 0:
        clone.projectors = torch.nn.ModuleList()
    return clone.to(dtype).requires_grad_(False).train()


def profile_for(model: torch.nn.Module, seconds: float, *, lora_config: dict | None = None,
                ssl: bool = True, dtype: torch.dtype = torch.bfloat16):
    """The activation profile of `model`'s architecture at `seconds` of audio (a LoRA of `lora_config`
    added to the meta copy, so its saved tensors count too)."""
    from acetune.training import memory_trace
    from acetune.training.lora import add_lora

    clone = meta_copy(model, dtype)
    if lora_config:
        add_lora(clone, {k: v for k, v in lora_config.items() if k != "use_dora"}, lora_dtype=torch.float32)
    if hasattr(clone, "transformer_blocks"):
        return memory_trace.v1_profile(clone, seconds, ssl=ssl)
    return memory_trace.v15_profile(clone, seconds)


def choice(k: int, n: int, inside: bool = False) -> str:
    """`off`, `all blocks`, `all blocks and their parts` or `k of n blocks`."""
    return "off" if k == 0 else ("all blocks and their parts" if inside else "all blocks") if k == n \
        else f"{k} of {n} blocks"


def describe(peak: Peak, mode: str, budget_gb: float | None, fits: bool = True) -> str:
    """The start-summary line: `gradient checkpointing: 12 of 24 blocks (auto, budget 24 GB): peak ~ 9.8 GB`."""
    why = f"auto, budget {budget_gb:g} GB" if budget_gb else mode
    host = f" (+ {sum(peak.host.values()) / GB:.2f} GB in host RAM)" if peak.host else ""
    warn = "" if fits else "; does NOT fit the budget even with everything checkpointed"
    return (f"  gradient checkpointing: {choice(peak.checkpointed, peak.blocks, peak.inside)} ({why}); "
            f"estimated peak {peak.total / GB:.2f} GB{host}{warn}")


# ---------------------------------------------------------------------------------------------
# The run's choice (`acetune train --gradient_checkpointing auto|on|fine|off --memory_budget_gb N`)
# ---------------------------------------------------------------------------------------------


def longest_seconds(rows) -> float:
    """The longest sample's audio seconds in a preprocessed dataset (its `duration` column)."""
    from acetune.dataset import schema

    try:
        return float(max(rows[schema.DURATION]))
    except (KeyError, ValueError, TypeError):
        return 360.0  # no duration column: plan for a long song


def plan_checkpointing(args, model: torch.nn.Module, setup, rows, *, lora_config: dict | None, use_ssl: bool,
                       device: torch.device, processes: int = 1) -> tuple[int, list[str]]:
    """Decide how many blocks to checkpoint and apply it; returns (blocks, the start-summary lines).

    on: all blocks; fine: all blocks and their parts (v1); off: none; auto: all without a budget, else the
    fewest that fit `--memory_budget_gb` at the dataset's longest sample and `--batch_size` (then `fine`).
    Only a budget needs the activation trace (seconds on the official config, and a meta-device call of
    the family's loss): without one, the summary gives the exact weights and trained state and no guess."""
    from acetune.errors import UsageError
    from acetune.training.block_checkpointing import apply_checkpointing, normalise_mode, transformer_blocks
    from acetune.training.lean_grads import lean_params

    mode = normalise_mode(args.gradient_checkpointing)
    blocks = transformer_blocks(model)
    n = len(blocks)
    if mode == "fine" and not hasattr(blocks[0], "checkpoint_inside"):
        raise UsageError("--gradient_checkpointing fine is available for ACE-Step v1 only",
                         fix="use --gradient_checkpointing on")
    budget = float(getattr(args, "memory_budget_gb", 0) or 0) if mode == "auto" else 0.0
    offload_inputs = bool(getattr(args, "activation_offload", False)) and device.type != "cpu"
    lean = lean_params(setup, autocast=args.precision == "bf16-mixed", compute_dtype=torch.bfloat16,
                       accumulate=args.accumulate_grad_batches, processes=processes)
    static = static_terms(model, setup.params, args.optimizer, int8=args.int8,
                          grad_dtype=torch.bfloat16 if lean and len(lean) == len(setup.params) else None,
                          offload=getattr(args, "optimizer_offload", False),
                          label="trained" if args.full else "adapter")
    k, inside, line = (0 if mode == "off" else n), mode == "fine", None
    if budget > 0:
        try:
            adapter = lora_config if not args.full and args.adapter == "lora" else None
            profile = scaled(profile_for(model, longest_seconds(rows), lora_config=adapter, ssl=use_ssl),
                             args.batch_size)
        except Exception as err:  # an architecture the tracer does not know: train anyway, say so
            line = f"  memory estimate unavailable ({type(err).__name__}: {str(err)[:80]}); checkpointing every block"
        else:
            workspace = CUDA_WORKSPACE if device.type == "cuda" else 0
            peak, fits = choose_checkpointed(static, profile, budget * GB, workspace, offload_inputs,
                                             inside_allowed=not getattr(args, "compile", False))
            k, inside = peak.checkpointed, peak.inside
            line = (describe(peak, mode, budget, fits)
                    + f" at {longest_seconds(rows):.0f} s x batch {args.batch_size}")
    apply_checkpointing(model, k, inside=inside, offload_inputs=offload_inputs)
    if line is None:
        fixed = static.weights + static.trainable + static.grads + (0 if static.offload else static.states)
        line = (f"  gradient checkpointing: {choice(k, n, inside)} ({mode}); weights + trained state "
                f"{fixed / GB:.2f} GB (--memory_budget_gb N estimates the activations too)")
    lines = [line]
    if getattr(args, "activation_offload", False):
        lines.append("  activation offload: " + ("checkpointed block inputs in host RAM" if offload_inputs
                                                  else "nothing to offload on --device cpu"))
    return k, lines


def scaled(profile, batch: int):
    """A batch-1 profile scaled to `batch` samples (activations grow linearly with the batch)."""
    import dataclasses

    if batch == 1:
        return profile
    return dataclasses.replace(profile, **{f: getattr(profile, f) * batch for f in
                                           ("batch", "outside", "block_full", "block_checkpointed", "block_largest",
                                            "heads", "heads_largest", "block_inside")})
