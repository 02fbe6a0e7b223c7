"""The ACE-Step 1.5 variant of the preprocessed dataset (layout, blobs and meta: `acetune.schema`).

The 1.5 DiT cross-attends to the packed output of `AceStepConditionEncoder` (lyric encoder +
timbre encoder + projected Qwen3 caption states). Like the official 1.5 trainer
(`acestep/training/dataset_builder_modules/preprocess.py`), preprocess runs the frozen text and
condition encoders once and stores that packed sequence, so training loads only the DiT.

Per row, 1.5 family:

| column           | dtype        | shape (decoded) | what                                               |
|------------------|--------------|-----------------|----------------------------------------------------|
| key              | string       |                 | sample id (song key, `#wN` per window)             |
| source_path      | string       |                 | audio file                                         |
| source_size      | int64        |                 | bytes, for resume                                  |
| source_mtime_ns  | int64        |                 | mtime, for resume                                  |
| window           | int32        |                 | window index (0 without --split)                   |
| duration         | float32      |                 | seconds of audio in this sample                    |
| latents          | blob (store) | (T, C)          | AutoencoderOobleck posterior sample, 25 Hz, C = 64 |
| latent_length    | int32        |                 | T                                                  |
| text_prompt      | string       |                 | the SFT-template text the text encoder read        |
| lyrics_prompt    | string       |                 | the "# Languages / # Lyric" text                   |
| encoder_states   | blob (store) | (L, D)          | condition-encoder output, valid tokens only        |

Stored `(T, C)` / `(L, D)` are sequence-first, the layout `AceStepTransformer1DModel` consumes.
"""

from __future__ import annotations

import torch

from acetune.schema import (
    DURATION,
    KEY,
    LATENT_LENGTH,
    LATENTS,
    SOURCE_MTIME_NS,
    SOURCE_PATH,
    SOURCE_SIZE,
    STORAGE_DTYPES,
    WINDOW,
    decode_blob,
    encode_blob,
    shape_column,
)

FAMILY_NAME = "acestep15"
TEXT_PROMPT = "text_prompt"
LYRICS_PROMPT = "lyrics_prompt"
ENCODER_STATES = "encoder_states"
BLOB_COLUMNS = (LATENTS, ENCODER_STATES)


def features():
    """The `datasets.Features` of a 1.5 preprocessed dataset."""
    from datasets import Features, Sequence, Value

    cols = {
        KEY: Value("string"),
        SOURCE_PATH: Value("string"),
        SOURCE_SIZE: Value("int64"),
        SOURCE_MTIME_NS: Value("int64"),
        WINDOW: Value("int32"),
        DURATION: Value("float32"),
        LATENT_LENGTH: Value("int32"),
        TEXT_PROMPT: Value("string"),
        LYRICS_PROMPT: Value("string"),
    }
    for name in BLOB_COLUMNS:
        cols[name] = Value("binary")
        cols[shape_column(name)] = Sequence(Value("int32"))
    return Features(cols)


def encode_tensors(row: dict, tensors: dict[str, torch.Tensor], storage: str) -> dict:
    """Add blob + shape columns for `tensors` (name -> tensor) to `row`; returns `row`."""
    for name, t in tensors.items():
        row[name], row[shape_column(name)] = encode_blob(t, STORAGE_DTYPES[storage])
    return row


def row_tensors(row: dict, storage: str) -> dict[str, torch.Tensor]:
    """Decode the blob columns of a row read back from the dataset (float tensors in `storage` dtype)."""
    return {name: decode_blob(row[name], row[shape_column(name)], STORAGE_DTYPES[storage])
            for name in BLOB_COLUMNS}
