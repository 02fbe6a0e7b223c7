"""Full fine-tune: train the transformer's own weights (all of them, or those matching `--trainable`).

`FullSetup` has the interface the loop and checkpoints use for a LoRA (`names`, `params`,
`lora_state`, `load_lora_state`), so `fit`, resume and DDP run unchanged; only what is saved
differs: the trained tensors themselves, in `full_weights.safetensors`, at their model names.

Precision follows `--precision` as for a LoRA: bf16-mixed keeps the trained weights in fp32
(the master copy) and computes under bf16 autocast; bf16 trains the bf16 weights directly (half
the memory, with bf16 rounding in the update). Weights nobody trains stay in the compute dtype.

At the end, `write_model_folder` writes a complete transformer folder in the family's layout
(base weights with the trained ones replaced), loadable with `from_pretrained`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acetune.errors import UsageError
from acetune.layout import V1_MARKER
from acetune.training.checkpoint import FULL_WEIGHTS_FILE

ADAPTER_NAME = "full"


@dataclass
class FullSetup:
    """The trainable tensors of a full fine-tune, in a fixed order (optimizer ids follow it)."""

    config: dict
    names: list[str]
    params: list[torch.nn.Parameter]
    adapter_name: str = ADAPTER_NAME
    embedder_names: list[str] = field(default_factory=list)  # nothing trained apart from `names`
    weights_file: str = FULL_WEIGHTS_FILE

    def lora_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trained tensors at their model names (checkpoints write these)."""
        params = dict(model.named_parameters())
        return {name: params[name].detach() for name in self.names}

    def load_lora_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy saved tensors back bit for bit (resume); the saved set must be exactly this run's."""
        if set(state) != set(self.names):
            raise UsageError(f"the checkpoint trained {len(state)} tensors, this run trains {len(self.names)}",
                             fix="resume with the same --trainable patterns")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.names:
                params[name].copy_(state[name])


    def present_in(self, model: torch.nn.Module) -> FullSetup:
        """This setup without the tensors the model freed since (e.g. SSL projectors when SSL is off)."""
        params = dict(model.named_parameters())
        kept = [(n, p) for n, p in zip(self.names, self.params) if n in params and params[n] is p]
        if len(kept) == len(self.names):
            return self
        config = {**self.config, "parameters": int(sum(p.numel() for _, p in kept))}
        return FullSetup(config=config, names=[n for n, _ in kept], params=[p for _, p in kept])


def matches(name: str, patterns: list[str]) -> bool:
    """fnmatch on the parameter name, or on its module path (so `transformer_blocks.*.attn` selects a module)."""
    module = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module, p)
               or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def setup_full(model: torch.nn.Module, trainable: list[str], master_dtype: torch.dtype) -> FullSetup:
    """Make the matching parameters (every one when `trainable` is empty) trainable, in `master_dtype`."""
    names, params = [], []
    for name, param in model.named_parameters():
        on = not trainable or matches(name, trainable)
        param.requires_grad_(on)
        if on:
            if param.is_floating_point() and param.dtype != master_dtype:
                param.data = param.data.to(master_dtype)
            names.append(name)
            params.append(param)
    if not names:
        raise UsageError(f"--trainable {' '.join(trainable)} matches no parameter of the model",
                         fix="use module paths such as 'transformer_blocks.*.attn' (see the model's state dict)")
    config = {"full_finetune": True, "trainable": list(trainable) or ["*"],
              "parameters": int(sum(p.numel() for p in params))}
    return FullSetup(config=config, names=names, params=params)


def describe(setup: FullSetup, resident: int) -> str:
    """The header line for a full fine-tune."""
    patterns = ", ".join(setup.config["trainable"])
    return f"  full fine-tune of {patterns}: {setup.config['parameters']:,} trainable of {resident:,} parameters"


def write_model_folder(family, checkpoint_dir: Path, trained: dict[str, torch.Tensor], out_dir: Path,
                       dtype: torch.dtype = torch.bfloat16) -> Path:
    """A complete transformer folder: the base transformer with the trained tensors put in, saved with
    `save_pretrained` (config.json + safetensors) in `dtype` (the run's compute dtype), so
    `from_pretrained` and `acetune doctor` read it."""
    model = family.load_transformer(Path(checkpoint_dir), dtype=dtype, device="cpu")
    params = dict(model.named_parameters())
    unknown = sorted(set(trained) - set(params))
    if unknown:
        raise UsageError(f"{len(unknown)} trained tensors are not in the base model (first: {unknown[0]})",
                         fix="write the folder with the --checkpoint_dir the run was trained from")
    with torch.no_grad():
        for name, value in trained.items():
            params[name].copy_(value.to(params[name].dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "acetune_full_finetune.json").write_text(
        json.dumps({"base": str(checkpoint_dir), "trained_tensors": len(trained)}, indent=2) + "\n")
    return out_dir


def write_final_model(run, output_dir: Path, dtype: torch.dtype) -> None:
    """End of a `--full` run: `<output_dir>/transformer/` (from_pretrained) plus the family's single-file
    ComfyUI checkpoint beside it. Under FSDP every rank must call this (the gather is a collective)."""
    trained = run.setup.lora_state(run.model)
    if not run.accelerator.is_main_process:
        return
    folder = write_model_folder(run.family, run.checkpoint_dir, trained, output_dir / "transformer", dtype=dtype)
    run.echo(f"fine-tuned transformer: {folder} (from_pretrained folder; `acetune export --extract_lora` makes a "
             "LoRA of it)")
    single = write_comfyui_checkpoint(folder, output_dir / COMFYUI_CHECKPOINT_FILE)
    if single:
        run.echo(f"ComfyUI: {single} (copy it to ComfyUI/models/diffusion_models/, load with 'Load Diffusion Model')")
    else:  # ACE-Step 1.5: the rest of ComfyUI's model comes from the user's own ComfyUI file
        from acetune.models.v15.export_comfyui import export_command

        run.echo(f"ComfyUI single file: {export_command(folder)}")


COMFYUI_CHECKPOINT_FILE = "transformer_comfyui.safetensors"
# ComfyUI's checkpoint prefix for the diffusion model; its loader strips it (`unet_prefix_from_state_dict`)
# and detects ACE-Step v1 by `genre_embedder.weight` (/work/shared/facts/comfyui-lora.md: exactly the
# official transformer keys).
COMFYUI_MODEL_PREFIX = "model.diffusion_model."


def comfyui_state(transformer_dir: Path) -> dict[str, torch.Tensor] | None:
    """Every weight of a v1 transformer folder under `COMFYUI_MODEL_PREFIX`; None for other families."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(transformer_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    if V1_MARKER not in state:
        return None
    return {COMFYUI_MODEL_PREFIX + k: v.contiguous() for k, v in state.items()}


def write_comfyui_checkpoint(transformer_dir: Path, out: Path) -> Path | None:
    """The single-file checkpoint ComfyUI's 'Load Diffusion Model' reads (written atomically); None if the
    family has none."""
    import os

    from safetensors.torch import save_file

    state = comfyui_state(transformer_dir)
    if state is None:
        return None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
