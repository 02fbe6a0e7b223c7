"""The preprocessed dataset, defined once: columns, storage dtypes, shapes and metadata.

`acetune preprocess` writes it and `acetune train` reads it; nothing else spells a column name.

Layout on disk (an output folder):

    <out>/acetune_dataset.json      # DatasetMeta: family, checkpoint hash, settings, schema version
    <out>/parts/part-<shard>-<n>/   # each a `datasets` save_to_disk folder, written atomically

Tensors are stored as raw little-endian bytes plus a shape column, because `datasets`' fixed-shape
arrays allow only one dynamic (first) axis and upcast torch bf16 to float32; raw 16-bit blobs keep
the bytes on disk exactly what we asked for (checked by tests).

Per row (one song, or one window of a song with `--split`), v1 family:

| column                 | dtype        | shape (decoded)        | what                                  |
|------------------------|--------------|------------------------|---------------------------------------|
| key                    | string       |                        | sample id (song key, `#wN` per window)|
| source_path            | string       |                        | audio file                            |
| source_size            | int64        |                        | bytes, for resume                     |
| source_mtime_ns        | int64        |                        | mtime, for resume                     |
| window                 | int32        |                        | window index (0 without --split)      |
| duration               | float32      |                        | seconds of audio in this sample       |
| latents                | blob (store) | (8, 16, F)             | DCAE latents                          |
| latent_length          | int32        |                        | valid latent frames                   |
| prompts                | list[string] | (K,)                   | the K prompt variants' texts          |
| text_embeds            | blob (store) | (K, T, 768)            | UMT5 last_hidden_state per variant    |
| text_mask              | blob (int8)  | (K, T)                 | tokenizer attention mask per variant  |
| lyric_ids              | list[int32]  | (L,)                   | lyric token ids (dataset path)        |
| lyrics_warning         | string       |                        | tokenizer warning, "" if none         |
| speaker_emb            | blob (store) | (512,)                 | speaker embedding (zeros if none)     |
| ssl.mert / ssl.m-hubert| blob (6-bit) | (T_ssl, D)             | SSL targets (optional, see below)     |

SSL targets only enter the loss through their per-frame direction (cosine similarity, golden
README "SSL projection losses"), so they are stored as `round(31 · x / max|x|)` per frame, without
the scale, packed 6 bits per value (4 values in 3 bytes): 5.3x smaller than fp32, and the stored
direction's cosine to the original is > 0.999 (tests). SSL features are 98.8% of the fork's bytes,
so this is what brings a song with MERT + mHuBERT under 0.1 MB per audio-second.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

SCHEMA_VERSION = 1
META_FILE = "acetune_dataset.json"
PARTS_DIR = "parts"

# column names
KEY = "key"
SOURCE_PATH = "source_path"
SOURCE_SIZE = "source_size"
SOURCE_MTIME_NS = "source_mtime_ns"
WINDOW = "window"
DURATION = "duration"
LATENTS = "latents"
LATENT_LENGTH = "latent_length"
PROMPTS = "prompts"
TEXT_EMBEDS = "text_embeds"
TEXT_MASK = "text_mask"
LYRIC_IDS = "lyric_ids"
LYRICS_WARNING = "lyrics_warning"
SPEAKER_EMB = "speaker_emb"
SSL_PREFIX = "ssl."
SSL_NAMES = ("mert", "m-hubert")  # the transformer's ssl_names, in its order

BLOB_COLUMNS = (LATENTS, TEXT_EMBEDS, TEXT_MASK, SPEAKER_EMB) + tuple(SSL_PREFIX + n for n in SSL_NAMES)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_FIXED_BLOB_DTYPE = {TEXT_MASK: torch.int8}


def shape_column(name: str) -> str:
    return f"{name}.shape"


def features(ssl_names: tuple[str, ...] = ()):
    """The `datasets.Features` of a v1 preprocessed dataset with the given SSL sources."""
    from datasets import Features, Sequence, Value

    cols = {
        KEY: Value("string"),
        SOURCE_PATH: Value("string"),
        SOURCE_SIZE: Value("int64"),
        SOURCE_MTIME_NS: Value("int64"),
        WINDOW: Value("int32"),
        DURATION: Value("float32"),
        LATENT_LENGTH: Value("int32"),
        PROMPTS: Sequence(Value("string")),
        LYRIC_IDS: Sequence(Value("int32")),
        LYRICS_WARNING: Value("string"),
    }
    for name in (LATENTS, TEXT_EMBEDS, TEXT_MASK, SPEAKER_EMB) + tuple(SSL_PREFIX + n for n in ssl_names):
        cols[name] = Value("binary")
        cols[shape_column(name)] = Sequence(Value("int32"))
    return Features(cols)


def blob_dtype(name: str, storage: str) -> torch.dtype:
    """dtype of a non-SSL blob column (SSL columns are 6-bit packed: `encode_column`)."""
    return _FIXED_BLOB_DTYPE.get(name, STORAGE_DTYPES[storage])


SSL_LEVELS = 31  # 6-bit signed levels per SSL value


def is_ssl_column(name: str) -> bool:
    return name.startswith(SSL_PREFIX)


def quantize_ssl(x: torch.Tensor) -> torch.Tensor:
    """(T, D) float -> int8 per-frame direction in [-31, 31] (scale dropped on purpose: cosine loss)."""
    peak = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.round(x.float() / peak * SSL_LEVELS).to(torch.int8)


def pack_int6(q: torch.Tensor) -> bytes:
    """int8 values in [-31, 31] -> 6 bits each, 4 values per 3 bytes (zero-padded at the end)."""
    u = (q.detach().cpu().reshape(-1).numpy().astype(np.int16) + 32).astype(np.uint8)
    if u.size and (u.min() < 1 or u.max() > 63):
        raise ValueError("pack_int6 takes values in [-31, 31]")
    u = np.concatenate([u, np.full((-u.size) % 4, 32, np.uint8)]).reshape(-1, 4)
    out = np.empty((u.shape[0], 3), np.uint8)
    out[:, 0] = (u[:, 0] << 2) | (u[:, 1] >> 4)
    out[:, 1] = ((u[:, 1] & 0x0F) << 4) | (u[:, 2] >> 2)
    out[:, 2] = ((u[:, 2] & 0x03) << 6) | u[:, 3]
    return out.tobytes()


def unpack_int6(data: bytes, shape) -> torch.Tensor:
    """Inverse of `pack_int6` -> int8 tensor of `shape`."""
    b = np.frombuffer(data, np.uint8).reshape(-1, 3)
    u = np.empty((b.shape[0], 4), np.uint8)
    u[:, 0] = b[:, 0] >> 2
    u[:, 1] = ((b[:, 0] & 0x03) << 4) | (b[:, 1] >> 4)
    u[:, 2] = ((b[:, 1] & 0x0F) << 2) | (b[:, 2] >> 6)
    u[:, 3] = b[:, 2] & 0x3F
    n = int(np.prod(shape)) if len(shape) else 1
    v = u.reshape(-1)[:n].astype(np.int16) - 32
    return torch.from_numpy(v.astype(np.int8)).reshape(list(shape))


def encode_column(name: str, t: torch.Tensor, storage: str) -> tuple[bytes, list[int]]:
    """Tensor of blob column `name` -> (bytes, shape) as stored; SSL columns take float features."""
    if is_ssl_column(name):
        q = quantize_ssl(t)
        return pack_int6(q), list(q.shape)
    return encode_blob(t, blob_dtype(name, storage))


def encode_blob(t: torch.Tensor, dtype: torch.dtype) -> tuple[bytes, list[int]]:
    """Tensor -> (raw little-endian bytes in `dtype`, shape)."""
    t = t.detach().to("cpu", dtype).contiguous()
    if dtype == torch.bfloat16:  # numpy has no bf16: keep the raw 16 bits
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(), list(t.shape)


def decode_blob(data: bytes, shape, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `encode_blob`; returns a tensor of `dtype` (copy, writable)."""
    if dtype == torch.bfloat16:
        arr = np.frombuffer(data, dtype="<i2").copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(list(shape))
    np_dtype = {torch.float16: "<f2", torch.float32: "<f4", torch.int8: "i1"}[dtype]
    return torch.from_numpy(np.frombuffer(data, dtype=np_dtype).copy()).reshape(list(shape))


def row_tensor(row: dict, name: str, storage: str) -> torch.Tensor | None:
    """Decode blob column `name` of a row read back from the dataset (None if absent/empty)."""
    data = row.get(name)
    if data is None or len(data) == 0:
        return None
    shape = row[shape_column(name)]
    if is_ssl_column(name):
        return unpack_int6(data, shape)
    return decode_blob(data, shape, blob_dtype(name, storage))


@dataclass
class DatasetMeta:
    """What produced a preprocessed dataset; the trainer refuses a dataset made for another model."""

    family: str
    checkpoint_hash: str
    storage_dtype: str = "float16"
    ssl_names: list[str] = field(default_factory=list)
    prompt_variants: int = 4
    settings: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    checkpoint: dict = field(default_factory=dict)  # the family's checkpoint identity (1.5: name, variant, widths, ...)

    def save(self, folder: str | os.PathLike) -> None:
        path = Path(folder) / META_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DatasetMeta:
        from acetune.errors import InputError

        path = Path(folder) / META_FILE
        if not path.is_file():
            raise InputError("not a preprocessed acetune dataset (no acetune_dataset.json)", path=folder,
                             fix="run `acetune preprocess` to create it")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InputError(f"dataset schema version {data.get('schema_version')} is not {SCHEMA_VERSION}",
                             path=path, fix="preprocess the songs again with this acetune version")
        return cls(**data)


def config_hash(config: dict) -> str:
    """Stable short hash of a model config (keys starting with '_' ignored)."""
    clean = {k: v for k, v in sorted(config.items()) if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def part_dirs(folder: str | os.PathLike) -> list[Path]:
    """Finished parts of a preprocessed dataset, in name order (temp folders ignored)."""
    root = Path(folder) / PARTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("part-"))


def load_dataset(folder: str | os.PathLike):
    """(datasets.Dataset of all finished parts, DatasetMeta)."""
    from datasets import concatenate_datasets, load_from_disk

    from acetune.errors import InputError

    meta = DatasetMeta.load(folder)
    parts = [load_from_disk(str(p)) for p in part_dirs(folder)]
    if not parts:
        raise InputError("the preprocessed dataset has no finished songs", path=folder,
                         fix="run `acetune preprocess` (again) to encode the songs")
    return (parts[0] if len(parts) == 1 else concatenate_datasets(parts)), meta
