"""Which ACE-Step 1.5 checkpoint a folder holds: its variant (turbo / base / sft), its size (2B or XL),
and the identity a preprocessed dataset records so it is never trained on another checkpoint.

The variant decides the training recipe (`objective.default_recipe`). It is read from the DiT's
`transformer/config.json` (`model_version`, then `is_turbo`, the fields `AceStepPipeline` reads to
pick CFG), then from the folder name (`acestep-v15-sft-diffusers`); a folder that says nothing is
"base", as diffusers treats every non-turbo DiT. XL is the 4B decoder (2560 wide) fed by a 2048-wide
condition encoder: `encoder_hidden_size` differs from `hidden_size`, or the folder name says "xl".
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from acetune.errors import CheckpointError
from acetune.models.v15.layout import TRANSFORMER_DIR
from acetune.models.v15.objective import VARIANTS

CONFIG_FILE = "config.json"
RELEASED_WIDTHS = {2048: "2B", 2560: "XL"}  # decoder hidden_size of the released DiTs
_HUB_CACHE = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]")


def transformer_config(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / TRANSFORMER_DIR / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the DiT config ({err})", path=path,
                              fix="download the complete diffusers ACE-Step 1.5 folder") from None
    return data if isinstance(data, dict) else {}


def checkpoint_name(checkpoint_dir: str | Path) -> str:
    """`owner/name` for a Hugging Face cache snapshot (`models--owner--name/snapshots/<sha>`), else the folder name."""
    path = Path(checkpoint_dir).resolve()
    found = _HUB_CACHE.search(path.as_posix() + "/")
    return f"{found.group(1)}/{found.group(2)}" if found else path.name


def _name_tokens(checkpoint_dir: str | Path) -> list[str]:
    return re.split(r"[^a-z0-9]+", checkpoint_name(checkpoint_dir).lower())


def variant_of(checkpoint_dir: str | Path) -> str:
    """"turbo", "base" or "sft" (module docstring: config first, then folder name, else "base")."""
    config = transformer_config(checkpoint_dir)
    version = str(config.get("model_version") or "").lower()
    for variant in VARIANTS:
        if variant in re.split(r"[^a-z0-9]+", version):
            return variant
    if config.get("is_turbo"):
        return "turbo"
    tokens = _name_tokens(checkpoint_dir)
    return next((v for v in VARIANTS if v in tokens), "base")


def widths(checkpoint_dir: str | Path) -> tuple[int, int]:
    """(decoder width, condition width): `hidden_size` and `encoder_hidden_size` (None means equal)."""
    config = transformer_config(checkpoint_dir)
    hidden = int(config.get("hidden_size", 2048))
    return hidden, int(config.get("encoder_hidden_size") or hidden)


def is_xl(checkpoint_dir: str | Path) -> bool:
    decoder, condition = widths(checkpoint_dir)
    return decoder != condition or "xl" in _name_tokens(checkpoint_dir)


def identity(checkpoint_dir: str | Path, config_hash: str, condition_tensors: dict) -> dict:
    """What a preprocessed dataset records about its checkpoint.

    `config_hash` covers the DiT and condition-encoder configs; `condition_hash` fingerprints the
    condition encoder's trained tensors (`null_condition_emb`, `silence_latent`), so two checkpoints with
    one config but other weights differ too. Only `name` may differ between compatible checkpoints.
    """
    digest = hashlib.sha256()
    for key in sorted(condition_tensors):
        digest.update(key.encode())
        digest.update(condition_tensors[key].float().contiguous().numpy().tobytes())
    decoder, condition = widths(checkpoint_dir)
    return {"name": checkpoint_name(checkpoint_dir), "variant": variant_of(checkpoint_dir),
            "xl": is_xl(checkpoint_dir), "decoder_width": decoder, "condition_width": condition,
            "config_hash": config_hash, "condition_hash": digest.hexdigest()[:16]}


def describe(ident: dict) -> str:
    """One phrase: `acestep-v15-turbo (turbo, 2B, widths 2048/2048, config 1a2b3c4d, weights 5e6f7a8b)`."""
    return (f"{ident.get('name', '?')} ({ident.get('variant', '?')}, {'XL' if ident.get('xl') else '2B'}, "
            f"widths {ident.get('decoder_width', '?')}/{ident.get('condition_width', '?')}, "
            f"config {str(ident.get('config_hash', '?'))[:8]}, weights {str(ident.get('condition_hash', '?'))[:8]})")


def same_checkpoint(a: dict, b: dict) -> bool:
    """True when two identities may share cached conditioning (everything but the name agrees)."""
    keys = ("variant", "xl", "decoder_width", "condition_width", "config_hash", "condition_hash")
    return all(a.get(k) == b.get(k) for k in keys)
