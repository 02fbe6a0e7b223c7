"""A tiny checkpoint + preprocessed dataset for trainer tests (generated, written in the real layouts).

`make_checkpoint(folder)` writes a 2-block tiny v1 checkpoint through `save_tiny_checkpoint`;
`make_dataset(folder, checkpoint)` writes songs in the `acetune.dataset.schema` layout (what `acetune
preprocess` writes) with random latents, K prompt variants, lyrics and optional int8 SSL targets.
Also usable from subprocess scripts: `python train_fixtures.py CKPT DATA` builds both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TINY_OVERRIDES = {"num_layers": 2, "ssl_encoder_depths": [0, 1], "lyric_encoder_num_blocks": 2}


def make_checkpoint(folder: Path) -> Path:
    from acetune.models.v1.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(folder, seed=3, transformer_overrides=TINY_OVERRIDES)


def make_dataset(folder: Path, checkpoint: Path, *, songs: int = 3, frames: tuple[int, ...] = (24, 17, 30),
                 variants: int = 2, ssl: bool = False, seed: int = 0) -> Path:
    """Write `songs` rows (latent widths cycling through `frames`) as one finished part."""
    import datasets
    from datasets import Dataset

    from acetune.dataset import schema

    datasets.disable_progress_bars()
    from acetune.models.v1.family import FAMILY
    from acetune.models.v1.loading import read_config
    from acetune.models.v1.transformer import ACEStepTransformer2DModel

    config = read_config(ACEStepTransformer2DModel, Path(checkpoint) / "ace_step_transformer")
    text_dim, spk_dim = config["text_embedding_dim"], config["speaker_embedding_dim"]
    ssl_names = ("mert", "m-hubert") if ssl else ()
    ssl_dims = dict(zip(config["ssl_names"], config["ssl_latent_dims"]))
    g = torch.Generator().manual_seed(seed)
    rows = {name: [] for name in schema.features(ssl_names)}
    for i in range(songs):
        width = frames[i % len(frames)]
        text_len = 5 + i
        values = {
            schema.KEY: f"song{i}", schema.SOURCE_PATH: f"song{i}.wav", schema.SOURCE_SIZE: 1000 + i,
            schema.SOURCE_MTIME_NS: 0, schema.WINDOW: 0, schema.DURATION: width * 512 * 8 / 44100,
            schema.LATENT_LENGTH: width, schema.PROMPTS: [f"prompt {i} v{k}" for k in range(variants)],
            schema.LYRIC_IDS: torch.randint(1, 6000, (4 + 2 * i,), generator=g).tolist() if i != 1 else [],
            schema.LYRICS_WARNING: "",
        }
        blobs = {
            schema.LATENTS: torch.randn(8, 16, width, generator=g),
            schema.TEXT_EMBEDS: torch.randn(variants, text_len, text_dim, generator=g),
            schema.TEXT_MASK: torch.ones(variants, text_len),
            schema.SPEAKER_EMB: torch.randn(spk_dim, generator=g),
        }
        for name in ssl_names:
            blobs[schema.SSL_PREFIX + name] = torch.randn(width * 3, ssl_dims[name], generator=g)
        for name, tensor in blobs.items():
            data, shape = schema.encode_column(name, tensor, "float16")
            values[name], values[schema.shape_column(name)] = data, shape
        for name in rows:
            rows[name].append(values[name])
    folder = Path(folder)
    (folder / schema.PARTS_DIR).mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=schema.features(ssl_names)).save_to_disk(
        str(folder / schema.PARTS_DIR / "part-00000-0"))
    schema.DatasetMeta(family=FAMILY.name, checkpoint_hash=FAMILY.config_hash(checkpoint), storage_dtype="float16",
                       ssl_names=list(ssl_names), prompt_variants=variants).save(folder)
    return folder


def train_argv(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    """Flags for a fast, deterministic CPU run of the tiny model (rank 4 LoRA, fp32)."""
    lora = Path(out).parent / "lora_r4.json"
    lora.write_text('{"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}')
    return ["--dataset_path", str(data), "--checkpoint_dir", str(ckpt), "--output_dir", str(out),
            "--lora_config_path", str(lora), "--precision", "32", "--device", "cpu", "--logger", "none",
            "--learning_rate", "1e-3", "--warmup_steps", "2", *extra]


if __name__ == "__main__":
    make_dataset(Path(sys.argv[2]), make_checkpoint(Path(sys.argv[1])))
