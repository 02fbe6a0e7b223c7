"""Read an official `ace_step_transformer/` folder into a model class (`ACEStepTransformer2DModel`).

The model class is a parameter (`model_cls`), so this module sits below `models/v1/transformer.py`,
whose `ACEStepTransformer2DModel.from_pretrained(folder)` calls `load_transformer` here.

The folder holds `config.json` (the reference's keys, `_class_name: Transformer2DModel`, an
ignored `inner_dim`) and `diffusion_pytorch_model.safetensors`, or shards listed in
`diffusion_pytorch_model.safetensors.index.json`. The model is built on the meta device and each
tensor is materialised once, in the requested dtype, so peak memory is about the model's size.

Anything that does not match raises a one-line `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from acetune.errors import CheckpointError
from acetune.layout import (
    CONFIG_FILE,
    V1_COMPONENT_DIRS,
    V1_DCAE_DIR,
    V1_TEXT_ENCODER_DIR,
    V1_TRANSFORMER_DIR,
    V1_VOCODER_DIR,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
)
from acetune.models.v1.attention import CrossAttention

logger = logging.getLogger(__name__)

CLASS_NAMES = ("Transformer2DModel", "ACEStepTransformer2DModel")  # official file / our save_pretrained
_INT_KEYS = ("in_channels", "num_layers", "attention_head_dim", "num_attention_heads", "out_channels",
             "max_position", "speaker_embedding_dim", "text_embedding_dim", "lyric_encoder_vocab_size",
             "lyric_hidden_size", "max_height", "max_width", "lyric_encoder_output_size",
             "lyric_encoder_attention_heads", "lyric_encoder_linear_units", "lyric_encoder_num_blocks")


def _fix(folder: Path | str) -> str:
    """The one-line fix for a bad file in `folder`, naming its component folder (`music_vocoder`, ...):
    `weight_files`/`read_config` also check the DCAE and vocoder folders (`V1Family.check_checkpoint`)."""
    component = next((p for p in reversed(Path(folder).parts) if p in V1_COMPONENT_DIRS), V1_TRANSFORMER_DIR)
    return (f"point at the {component} folder of the official ACE-Step-v1-3.5B checkpoint "
            "(download it again if incomplete)")


_FIX = _fix(V1_TRANSFORMER_DIR)
# Files the text encoder folder must hold (as the official release ships it).
TEXT_ENCODER_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                      "tokenizer_config.json")
_FIX_INCOMPLETE = "download the complete ACE-Step/ACE-Step-v1-3.5B checkpoint (all four component folders)"  # for what only the transformer has (its config keys, its state dict)


def constructor_defaults(model_cls: type) -> dict:
    """{parameter: default} of `model_cls.__init__` (for the transformer: the released 3.5B config)."""
    params = inspect.signature(model_cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def config_kwargs(model_cls: type, config: dict, path: Path | str = CONFIG_FILE) -> dict:
    """Validate an official (or our own) transformer config dict; return `model_cls`'s constructor kwargs."""
    name = config.get("_class_name")
    if name not in CLASS_NAMES:
        raise CheckpointError(f"_class_name is {name!r}, expected 'Transformer2DModel' (not an ACE-Step v1 "
                              "transformer config)", path=path, fix=_FIX)
    defaults = constructor_defaults(model_cls)
    known = set(defaults)
    kwargs = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in known:
            raise CheckpointError(f"unknown config key {key!r}", path=path, fix=_FIX)
        kwargs[key] = value
    for key in _INT_KEYS:
        if key in kwargs and (not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool) or kwargs[key] <= 0):
            raise CheckpointError(f"config key {key!r} must be a positive integer, got {kwargs[key]!r}", path=path)
    cfg = {**defaults, **kwargs}
    ssl = [cfg["ssl_encoder_depths"], cfg["ssl_names"], cfg["ssl_latent_dims"]]
    if not all(isinstance(v, list | tuple) for v in ssl) or len({len(v) for v in ssl}) != 1:
        raise CheckpointError("config keys 'ssl_encoder_depths', 'ssl_names', 'ssl_latent_dims' must be lists "
                              "of the same length", path=path)
    if cfg["lyric_encoder_output_size"] != cfg["lyric_hidden_size"]:
        raise CheckpointError(f"config key 'lyric_encoder_output_size' ({cfg['lyric_encoder_output_size']}) must "
                              f"equal 'lyric_hidden_size' ({cfg['lyric_hidden_size']})", path=path)
    if cfg["lyric_encoder_output_size"] % cfg["lyric_encoder_attention_heads"]:
        raise CheckpointError("config key 'lyric_encoder_attention_heads' must divide 'lyric_encoder_output_size'",
                              path=path)
    if not (isinstance(cfg["patch_size"], list | tuple) and len(cfg["patch_size"]) == 2):
        raise CheckpointError("config key 'patch_size' must be a list of two integers", path=path)
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if kwargs.get("inner_dim") not in (None, width):
        logger.warning("%s: inner_dim %s ignored; the width is num_attention_heads × attention_head_dim = %d",
                       path, kwargs["inner_dim"], width)
    return kwargs


def read_config(model_cls: type, folder: Path | str) -> dict:
    """`model_cls` constructor kwargs from `folder/config.json` (validated)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"missing {CONFIG_FILE}", path=path, fix=_fix(folder))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read JSON ({exc})", path=path, fix=_fix(folder)) from None
    if not isinstance(config, dict):
        raise CheckpointError("not a JSON object", path=path, fix=_fix(folder))
    return config_kwargs(model_cls, config, path)


def weight_files(folder: Path | str) -> list[Path]:
    """The safetensors files of a folder: the single file, or every shard the index lists."""
    folder = Path(folder)
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return [single]
    if not index.is_file():
        raise CheckpointError(f"missing {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE} with its shards)", path=folder,
                              fix=_fix(folder))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"cannot read the shard index ({exc!r})", path=index, fix=_fix(folder)) from None
    for shard in shards:
        if not (folder / shard).is_file():
            raise CheckpointError(f"missing shard {shard} (listed in {WEIGHTS_INDEX_FILE})", path=folder / shard,
                                  fix=_fix(folder))
    return [folder / s for s in shards]


def _assign(model: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=owner._parameters[leaf].requires_grad)


def load_weights(model: torch.nn.Module, files: list[Path], dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", on_block=None) -> None:
    """Fill `model` (built on meta) from safetensors `files`; every key must match exactly.

    Keys the model does not hold because `drop_unused_projections()` removed them are checked for
    shape against the official layout and skipped. `on_block(block)` is called as soon as every weight
    of a transformer block is in (the int8 loader quantizes it there, before the next block is read).
    Each file is reopened every `REOPEN_BYTES` (and after each block with `on_block`): its memory map
    keeps every page read resident in the process until it is closed, which would add the file's size
    to the load's peak.
    """
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    dropped = _dropped_shapes(model)
    seen: set[str] = set()
    pending = {}  # block index -> keys still to read
    if on_block is not None:
        for key in expected:
            if key.startswith("transformer_blocks."):
                pending.setdefault(int(key.split(".")[1]), set()).add(key)
    for file in files:
        handle, read = _open(file, device), 0
        try:
            for key in list(handle.keys()):
                shape = tuple(handle.get_slice(key).get_shape())
                want = expected.get(key, dropped.get(key))
                if want is None:
                    raise CheckpointError(f"unexpected key {key!r}", path=file, fix=_FIX)
                if shape != want:
                    raise CheckpointError(f"key {key!r} has shape {list(shape)}, the config needs {list(want)}",
                                          path=file, fix="the config.json does not belong to these weights")
                seen.add(key)
                if key in expected:
                    # A fresh (64-byte aligned) allocation: safetensors hands out tensors that start mid-buffer
                    # (data_ptr % 64 = 24 or 56 here), and CPU GEMM kernels take another path on unaligned
                    # weights, changing the last bit of results against the same weights built in memory.
                    tensor = handle.get_tensor(key)
                    read += tensor.numel() * tensor.element_size()
                    _assign(model, key, tensor.to(dtype=dtype, copy=True))
                    del tensor
                    if key.startswith("transformer_blocks.") and on_block is not None:
                        index = int(key.split(".")[1])
                        pending[index].discard(key)
                        if not pending[index]:
                            on_block(model.transformer_blocks[index])
                            read = REOPEN_BYTES
                    if read >= REOPEN_BYTES:  # the mapping keeps every page read resident: let them go
                        handle.__exit__(None, None, None)
                        handle, read = _open(file, device), 0
        finally:
            handle.__exit__(None, None, None)
    missing = [k for k in expected if k not in seen]
    if missing:
        where = files[0] if len(files) == 1 else files[0].parent
        raise CheckpointError(f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                               else ""), path=where, fix=_FIX)


REOPEN_BYTES = 64 * 2**20  # reopen the file after reading this much (or a block, with `on_block`)


def _open(file: Path, device):
    try:
        handle = safe_open(str(file), framework="pt", device=str(device))
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"cannot open safetensors file ({exc})", path=file, fix=_FIX) from None
    return handle.__enter__()


def _dropped_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the unused cross-attention projections a model has deleted."""
    width = model.inner_dim
    out = {}
    for i, block in enumerate(model.transformer_blocks):
        for name in CrossAttention.UNUSED:
            if not hasattr(block.cross_attn, name):
                out[f"transformer_blocks.{i}.cross_attn.{name}.weight"] = (width, width)
                out[f"transformer_blocks.{i}.cross_attn.{name}.bias"] = (width,)
    return out


def load_transformer(model_cls: type, folder: Path | str, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", drop_unused: bool = False, on_block=None):
    """Load an official `ace_step_transformer/` folder into a `model_cls` instance (eval mode).

    Args:
        folder: the folder with config.json and the safetensors file(s).
        dtype: parameter dtype (float32, bfloat16, float16).
        device: where the parameters are created.
        drop_unused: skip the never-used `cross_attn.add_*` / `to_add_out` projections (training).
        on_block: called with each transformer block once all its weights are read (see `load_weights`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("transformer folder not found", path=folder, fix=_FIX)
    kwargs = read_config(model_cls, folder)
    files = weight_files(folder)
    with torch.device("meta"):  # no memory, no init cost: every tensor is assigned once from the file
        model = model_cls(**kwargs)
    if drop_unused:
        model.drop_unused_projections()
    load_weights(model, files, dtype=dtype, device=device, on_block=on_block)
    return model.eval()


def check_checkpoint(model_cls: type, checkpoint_dir: Path | str, components: tuple[str, ...] | None = None) -> None:
    """Refuse an incomplete checkpoint folder before anything is loaded (CheckpointError, first problem).

    `components`: the folders whose weights must be there (None: all; a stage that reads fewer passes
    `hub.stage_components`); every folder and config must be there regardless.
    """
    checkpoint_dir = Path(checkpoint_dir)
    needed = V1_COMPONENT_DIRS if components is None else components
    for sub in V1_COMPONENT_DIRS:
        if not (checkpoint_dir / sub).is_dir():
            raise CheckpointError(f"missing folder {sub}/", path=checkpoint_dir / sub, fix=_FIX_INCOMPLETE)
    read_config(model_cls, checkpoint_dir / V1_TRANSFORMER_DIR)
    for sub in (V1_TRANSFORMER_DIR, V1_DCAE_DIR, V1_VOCODER_DIR):
        if not (checkpoint_dir / sub / CONFIG_FILE).is_file():
            raise CheckpointError(f"missing {CONFIG_FILE}", path=checkpoint_dir / sub / CONFIG_FILE, fix=_FIX_INCOMPLETE)
        if sub in needed:
            weight_files(checkpoint_dir / sub)
    for name in TEXT_ENCODER_FILES if V1_TEXT_ENCODER_DIR in needed else ():
        if not (checkpoint_dir / V1_TEXT_ENCODER_DIR / name).is_file():
            raise CheckpointError(f"missing {name}", path=checkpoint_dir / V1_TEXT_ENCODER_DIR / name,
                                  fix=_FIX_INCOMPLETE)
