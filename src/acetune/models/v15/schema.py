"""ACE-Step 1.5 rows of the preprocessed dataset: the columns of `acetune.dataset.schema`, 1.5 meanings.

The 1.5 DiT cross-attends to the packed output of `AceStepConditionEncoder` (lyric encoder +
timbre encoder + projected Qwen3 caption states). Like the official 1.5 trainer
(`acestep/training/dataset_builder_modules/preprocess.py`), preprocess runs the frozen text and
condition encoders once and stores that packed sequence, so training loads only the DiT. It fits
the v1 columns, so the shared store, resume, merge, `training.data` and loop read 1.5 datasets
unchanged; no column is added:

| column         | v1 meaning                   | 1.5 meaning (shape decoded)                                  |
|----------------|------------------------------|--------------------------------------------------------------|
| latents        | DCAE latents (8, 16, F)      | AutoencoderOobleck latents (C, T), C = 64, 25 Hz             |
| latent_length  | valid frames                 | T                                                            |
| prompts        | K prompt variants            | [the SFT-template caption text] (K = 1)                      |
| text_embeds    | UMT5 states (K, T, 768)      | condition-encoder output (1, L, D), valid tokens only        |
| text_mask      | (K, T)                       | ones (1, L)                                                  |
| lyric_ids      | lyric BPE ids                | [] (the lyrics are inside text_embeds)                       |
| lyrics_warning | tokenizer warning            | the "# Languages / # Lyric" text the encoder read            |
| speaker_emb    | (512,)                       | zeros (1,) (1.5 has no speaker embedding)                    |

`DatasetMeta.family` is "acestep15", `prompt_variants` 1, `ssl_names` [].
"""

from __future__ import annotations

import torch

from acetune.dataset import schema

FAMILY_NAME = "acestep15"


def row(key: str, source_path: str, size: int, mtime_ns: int, window: int, duration: float,
        latents: torch.Tensor, encoder_states: torch.Tensor, text_prompt: str, lyrics_prompt: str,
        storage: str = "float16") -> dict:
    """One 1.5 row with every column of `schema.features(())`.

    Args:
        latents: (C, T) float; encoder_states: (L, D) float; storage: a `schema.STORAGE_DTYPES` name.
    """
    out = {
        schema.KEY: key, schema.SOURCE_PATH: source_path, schema.SOURCE_SIZE: int(size),
        schema.SOURCE_MTIME_NS: int(mtime_ns), schema.WINDOW: int(window), schema.DURATION: float(duration),
        schema.LATENT_LENGTH: int(latents.shape[-1]), schema.PROMPTS: [text_prompt], schema.LYRIC_IDS: [],
        schema.LYRICS_WARNING: lyrics_prompt,
    }
    states = encoder_states[None]  # (1, L, D)
    blobs = {schema.LATENTS: latents, schema.TEXT_EMBEDS: states,
             schema.TEXT_MASK: torch.ones(states.shape[:2]), schema.SPEAKER_EMB: torch.zeros(1)}
    for name, t in blobs.items():
        out[name], out[schema.shape_column(name)] = schema.encode_column(name, t, storage)
    return out


def decode(row_: dict, storage: str) -> dict[str, torch.Tensor]:
    """{"latents": (C, T), "encoder_states": (L, D)} float32 of a row read back (the `objective.collate` input)."""
    latents = schema.row_tensor(row_, schema.LATENTS, storage).float()[..., : int(row_[schema.LATENT_LENGTH])]
    return {"latents": latents, "encoder_states": schema.row_tensor(row_, schema.TEXT_EMBEDS, storage)[0].float()}
