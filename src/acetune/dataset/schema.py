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

SSL targets (`ssl.<name>`, encoding `SSL_ENCODING`): per frame t, the step is RMS(x_t) / 16 and the
stored values are round(x / step) (so |q| <= 16·sqrt(D)), zigzag-mapped to uint16, split into a
low-byte and a high-byte plane and compressed with zstd (pyarrow's codec); the blob is the float32
steps (T x 4 bytes) followed by that stream. The error is then the same for every distribution:
per-frame cosine to the original >= 0.9998 on Gaussian, Laplace, Student-t and outlier-channel
rows alike (each value's rounding error is at most step / 2 whatever the tails), and since a
frame of unit RMS has the Gaussian's second moment, zstd's entropy coding needs at most ~6.1 bits
per value (the Gaussian is the worst case): MERT (75 x 1024) + mHuBERT (50 x 768) <= 0.088 MB per
audio-second (tests/dataset/test_ssl_storage.py, docs/preprocess.md). SSL features are 98.8% of
the fork's bytes. Schema version 1 stored only 6-bit per-frame directions (`LEGACY_SSL_ENCODING`,
up to 3.7% cosine error on heavy tails); such datasets still load, with a warning to re-run
preprocess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

SCHEMA_VERSION = 2  # 2: SSL targets in `SSL_ENCODING` (1: 6-bit directions, still readable)
READABLE_VERSIONS = (1, 2)
SSL_ENCODING = "rms16-zigzag-zstd"
LEGACY_SSL_ENCODING = "int6-direction"  # schema version 1
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
    """dtype of a non-SSL blob column (SSL columns have their own encoding: `encode_ssl`)."""
    return _FIXED_BLOB_DTYPE.get(name, STORAGE_DTYPES[storage])


def is_ssl_column(name: str) -> bool:
    return name.startswith(SSL_PREFIX)


SSL_STEPS_PER_RMS = 16  # quantisation steps per frame RMS: cosine error 1/(2·12·16²) = 1.6e-4 per frame
_SSL_CODEC = "zstd"  # via pyarrow (already a dependency); entropy-codes the planes, ~1 GB/s to decode


def encode_ssl(x: torch.Tensor) -> tuple[bytes, list[int]]:
    """(T, D) float SSL features -> (blob, shape) in `SSL_ENCODING`.

    Raises:
        ValueError: non-finite features.
    """
    import pyarrow as pa

    x = x.detach().to("cpu", torch.float32)
    if x.ndim != 2:
        raise ValueError(f"SSL features must be (frames, width), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("SSL features contain NaN or infinity")
    step = x.pow(2).mean(dim=-1, keepdim=True).sqrt() / SSL_STEPS_PER_RMS  # (T, 1); 0 for a silent frame
    q = torch.round(x / torch.where(step > 0, step, 1.0)).to(torch.int32)
    zigzag = ((q << 1) ^ (q >> 31)).numpy().astype(np.uint16)  # 0, -1, 1, -2 ... -> 0, 1, 2, 3 ...
    planes = np.concatenate([(zigzag & 0xFF).astype(np.uint8).ravel(), (zigzag >> 8).astype(np.uint8).ravel()])
    packed = pa.Codec(_SSL_CODEC).compress(planes.tobytes(), asbytes=True)
    return step.numpy().astype("<f4").tobytes() + packed, list(x.shape)


def decode_ssl(data: bytes, shape, encoding: str = SSL_ENCODING) -> torch.Tensor:
    """Inverse of `encode_ssl` (or the schema-1 `LEGACY_SSL_ENCODING`) -> (T, D) float32."""
    import pyarrow as pa

    if encoding == LEGACY_SSL_ENCODING:
        return unpack_int6(data, shape).float() / _LEGACY_LEVELS  # per-frame direction only
    if encoding != SSL_ENCODING:
        raise ValueError(f"unknown SSL encoding {encoding!r}")
    frames, width = (int(n) for n in shape)
    step = np.frombuffer(data, "<f4", count=frames)
    planes = np.frombuffer(pa.Codec(_SSL_CODEC).decompress(data[4 * frames:], decompressed_size=2 * frames * width,
                                                           asbytes=True), np.uint8)
    zigzag = planes[: frames * width].astype(np.int32) | (planes[frames * width:].astype(np.int32) << 8)
    q = (zigzag >> 1) ^ -(zigzag & 1)
    return torch.from_numpy((q.reshape(frames, width) * step[:, None]).astype(np.float32))


_LEGACY_LEVELS = 31  # schema 1: round(31 · x / max|x|) per frame, 6 bits per value


def unpack_int6(data: bytes, shape) -> torch.Tensor:
    """Schema-1 SSL blobs: 6 bits per value, 4 values in 3 bytes -> int8 tensor of `shape`."""
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
        return encode_ssl(t)
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


def row_tensor(row: dict, name: str, storage: str, ssl_encoding: str = SSL_ENCODING) -> torch.Tensor | None:
    """Decode blob column `name` of a row read back from the dataset (None if absent/empty).

    `ssl_encoding`: the dataset's (`DatasetMeta.ssl_encoding`); SSL columns decode to float32.
    """
    data = row.get(name)
    if data is None or len(data) == 0:
        return None
    shape = row[shape_column(name)]
    if is_ssl_column(name):
        return decode_ssl(data, shape, ssl_encoding)
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
    ssl_encoding: str = SSL_ENCODING

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
        if data.get("schema_version") not in READABLE_VERSIONS:
            raise InputError(f"dataset schema version {data.get('schema_version')} is not {SCHEMA_VERSION}",
                             path=path, fix="preprocess the songs again with this acetune version")
        if data["schema_version"] == 1:
            data["ssl_encoding"] = LEGACY_SSL_ENCODING
            if data.get("ssl_names"):
                logging.getLogger(__name__).warning(
                    "%s: SSL targets in the schema-1 6-bit format (up to ~4%% cosine error on heavy-tailed "
                    "features); re-run `acetune preprocess` into a new output to store them exactly", folder)
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
