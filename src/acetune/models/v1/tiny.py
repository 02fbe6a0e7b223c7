"""A tiny ACE-Step v1 checkpoint folder in the official layout, with generated weights (tests, demo).

`save_tiny_checkpoint(folder)` writes every component the real checkpoint has, each through its
own module's tiny config or saver, so loading it exercises the same code path as the 3.5B release:

    <folder>/ace_step_transformer/   config.json (`_class_name` "Transformer2DModel") + safetensors
    <folder>/music_dcae_f8c8/        the golden tiny AutoencoderDC (`tiny_dcae_config`)
    <folder>/music_vocoder/          the golden tiny vocoder (`tiny_vocoder_config`)
    <folder>/umt5-base/              `save_tiny_umt5` (10 layers, d_model = text_embedding_dim)
    <folder>/vocab.json              the lyric BPE vocab, copied when `lyric_vocab` is given

The transformer is the golden tiny config made deep enough for every ERG hook of the reference's
default guidance (20 blocks: ERG diffusion damps blocks 15..19; 6 Conformer blocks: ERG lyric damps
4 and 5), but narrow (width 32), so a 2-second render with 4 steps takes about a second on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from acetune.layout import (
    CONFIG_FILE,
    LYRIC_VOCAB_FILE,
    V1_DCAE_DIR,
    V1_TEXT_ENCODER_DIR,
    V1_TRANSFORMER_DIR,
)
from acetune.models.v1.text_encoder import save_tiny_umt5
from acetune.models.v1.transformer import ACEStepTransformer2DModel, tiny_transformer_config

OFFICIAL_TRANSFORMER_CLASS = "Transformer2DModel"  # `_class_name` in the released config.json


def tiny_checkpoint_transformer_config() -> dict:
    """`tiny_transformer_config()` deepened for ERG (the golden sampler `erg_model_config.json` sizes)."""
    return {
        **tiny_transformer_config(),
        "num_layers": 20, "attention_head_dim": 16, "ssl_encoder_depths": [8, 8],
        "lyric_hidden_size": 32, "lyric_encoder_output_size": 32, "lyric_encoder_linear_units": 64,
        "lyric_encoder_num_blocks": 6,
    }


def save_tiny_checkpoint(folder: str | Path, seed: int = 0, lyric_vocab: str | Path | None = None,
                         transformer_overrides: dict | None = None) -> Path:
    """Write a tiny v1 checkpoint folder with seeded random weights; returns `folder`.

    Args:
        folder: created if missing; existing component folders are overwritten.
        seed: seeds every component (the caller's global RNG is left untouched).
        lyric_vocab: the lyric BPE `vocab.json` to copy next to the components (tests pass the golden
            one); None writes no vocab (generation then looks in the user cache, see `find_lyric_vocab`).
        transformer_overrides: constructor kwargs replacing `tiny_checkpoint_transformer_config()`
            entries, e.g. `{"num_layers": 2}` for a faster model without ERG diffusion.
    """
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import MusicDCAE, tiny_dcae_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**tiny_checkpoint_transformer_config(), **(transformer_overrides or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ACEStepTransformer2DModel(**config)
        transformer.save_pretrained(folder / V1_TRANSFORMER_DIR, safe_serialization=True)
        torch.manual_seed(seed + 1)
        codec = MusicDCAE(AutoencoderDC(**tiny_dcae_config()), ADaMoSHiFiGANV1(**tiny_vocoder_config()))
        codec.save_pretrained(folder)
    _set_official_class_name(folder / V1_TRANSFORMER_DIR / CONFIG_FILE)
    save_tiny_umt5(folder / V1_TEXT_ENCODER_DIR, num_layers=10, d_model=config["text_embedding_dim"], seed=seed)
    if lyric_vocab is not None:
        shutil.copyfile(lyric_vocab, folder / LYRIC_VOCAB_FILE)
    assert (folder / V1_DCAE_DIR / CONFIG_FILE).is_file()
    return folder


def _set_official_class_name(config_path: Path) -> None:
    # Our save_pretrained writes "ACEStepTransformer2DModel"; the release says "Transformer2DModel".
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["_class_name"] = OFFICIAL_TRANSFORMER_CLASS
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
