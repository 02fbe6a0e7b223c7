"""FSDP for `train --full`: shard the transformer across processes, gather full tensors to save.

On when more than one process runs a `--full` fine-tune under an accelerate config with
`distributed_type: FSDP` (`accelerate launch` then sets ACCELERATE_USE_FSDP=true). accelerate turns
FSDP on only for accelerators (on CPU its state stays MULTI_CPU) and would wrap the loss module as a
whole, so we call torch's FSDP2 `fully_shard` ourselves: once per repeated block (what is gathered at
a time) and once for the rest, the same on CPU (gloo) and GPUs (NCCL). The config's
`fsdp_reshard_after_forward` and `fsdp_offload_params` are honoured.

Checkpoints stay world-size independent: the trained tensors and the optimizer state are gathered
into full (consolidated) CPU tensors and saved in the single-process layout (`optimizer.state_dict()`
with integer ids in `FullSetup.names` order), so a run saved by N processes resumes on M.
"""

from __future__ import annotations

import os

import torch

from acetune.errors import UsageError
from acetune.training.full import FullSetup

# Module lists whose items are the repeated blocks: v1 `transformer_blocks`, the 1.5 decoder's
# `layers`, v1's lyric Conformer `encoders`.
BLOCK_LISTS = ("transformer_blocks", "layers", "encoders")
ENTRY_METHODS = ("encode", "decode", "encode_lyrics")  # model methods called instead of forward


def _env_flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "full_shard")


def fsdp_requested(accelerator) -> bool:
    """True under an accelerate FSDP config (GPU state, or the launcher's env on CPU)."""
    return str(getattr(accelerator, "distributed_type", "")).endswith("FSDP") or _env_flag("ACCELERATE_USE_FSDP")


def check_fsdp_run(args, accelerator) -> bool:
    """Whether this run shards (FSDP config, several processes, `--full`); refuses what FSDP cannot do."""
    if not fsdp_requested(accelerator) or accelerator.num_processes < 2:
        return False
    if not args.full:
        raise UsageError("the accelerate config asks for FSDP, which acetune uses for --full only; a LoRA trains "
                         "with DDP", fix="launch a LoRA run with config/accelerate_ddp.yaml (or add --full)")
    clashes = [f for f, on in (("--validation_prompt", bool(args.validation_prompt)),
                               ("--validation_split", bool(args.validation_split)),
                               ("--validation_dataset", bool(args.validation_dataset)),
                               ("--overfit_check", args.overfit_check)) if on]
    if getattr(args, "compile", False):
        raise UsageError("--compile with FSDP is not tested yet", fix="drop --compile for a sharded --full run")
    if clashes:
        raise UsageError(f"{', '.join(clashes)} runs on rank 0 alone, which a sharded (FSDP) model cannot do",
                         fix="drop it, or validate the saved transformer folder after the run")
    return True


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            found.extend(m for m in module if any(True for _ in m.parameters()))
    return found


def shard(model: torch.nn.Module, setup: FullSetup, device: torch.device) -> ShardedFullSetup:
    """Shard `model` in place (every block, then the root) and return the setup over the sharded params."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard, register_fsdp_forward_method

    options = {"reshard_after_forward": _env_flag("FSDP_RESHARD_AFTER_FORWARD", "true")}
    if _env_flag("FSDP_OFFLOAD_PARAMS") and device.type != "cpu":
        options["offload_policy"] = CPUOffloadPolicy()
    for block in _blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    for method in ENTRY_METHODS:  # the v1 loss calls these, not forward: gather the root's weights for them too
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    params = dict(model.named_parameters())  # DTensor parameters now, same names
    return ShardedFullSetup(config=setup.config, names=list(setup.names), params=[params[n] for n in setup.names])


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


class ShardedFullSetup(FullSetup):
    """A `FullSetup` whose parameters are FSDP shards. Gathering is a collective: call it on every rank."""

    sharded = True

    def lora_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full trained tensors on rank 0 ({} on the other ranks)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_options(cpu_offload=True))
        return {name: state[name] for name in self.names if name in state}

    def load_lora_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Every rank passes the full saved tensors; each keeps its shard."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        if set(state) != set(self.names):
            raise UsageError(f"the checkpoint trained {len(state)} tensors, this run trains {len(self.names)}",
                             fix="resume with the same --trainable patterns")
        set_model_state_dict(model, state, options=_full_options(strict=False))

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The full optimizer state in the single-process layout (rank 0; {} elsewhere)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
        if not full:
            return {}
        index = {name: i for i, name in enumerate(self.names)}
        return {"state": {index[name]: value for name, value in full["state"].items()},
                "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                                 for group in full["param_groups"]]}

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """Load a single-process-layout optimizer state (full tensors on every rank) into the shards."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        names = self.names
        by_name = {"state": {names[int(i)]: value for i, value in saved["state"].items()},
                   "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                                    for group in saved["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())
