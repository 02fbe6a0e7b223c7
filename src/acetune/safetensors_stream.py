"""Read safetensors headers and write a safetensors file tensor by tensor, copying raw byte ranges.

Hand-written because the safetensors library only writes a file from a dict held in memory
(`save_file`), and a ComfyUI ACE-Step 1.5 XL file is ~8 GB: here every tensor is copied from its
source file in chunks, so the peak memory is one copy buffer, and every copied tensor is byte-equal
to its source. The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
length, a JSON header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`
padded with spaces, then the tensor bytes, offsets counted from the end of the header.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from acetune.errors import InputError

METADATA_KEY = "__metadata__"
ITEM_SIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # weights acetune writes and ComfyUI computes with as they are
CHUNK = 16 << 20  # bytes per read/write while copying
_MAX_HEADER = 100 << 20  # the safetensors library's own limit


@dataclass(frozen=True)
class Stored:
    """One tensor of a safetensors file: where its bytes are and what they hold."""
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, Stored], dict[str, str]]:
    """({tensor name: Stored}, metadata) of a safetensors file; InputError (one line) if it is not one."""
    path = Path(path)
    with open(path, "rb") as f:  # a missing or unreadable file: the OSError's own one line (cli)
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        raw = f.read(length) if 0 < length <= min(_MAX_HEADER, size - 8) else b""
    tensors = {}
    try:
        header = json.loads(raw)
        metadata = header.pop(METADATA_KEY, None) or {}
        for name, entry in header.items():
            begin, end = (int(v) for v in entry["data_offsets"])
            tensors[name] = Stored(path, str(entry["dtype"]), tuple(int(d) for d in entry["shape"]),
                                   8 + length + begin, end - begin)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"not a safetensors file (its header does not parse: {type(err).__name__})", path=path,
                         fix="give a .safetensors file (a complete download)") from None
    for name, t in tensors.items():
        if t.dtype not in ITEM_SIZE or math.prod(t.shape) * ITEM_SIZE[t.dtype] != t.nbytes or t.start + t.nbytes > size:
            raise InputError(f"tensor {name!r} does not fit its header (truncated or damaged file)", path=path,
                             fix="download the file again")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def write_streamed(out: Path, tensors: Iterable[tuple[str, Stored]], metadata: dict[str, str]) -> int:
    """Write `out` atomically (temp file + rename) from (name, source) pairs, each copied byte for byte.

    Tensors are laid out widest dtype first so every tensor starts at a multiple of its item size
    (as the safetensors library writes them; readers that map the file need it). Returns bytes written.
    """
    items = sorted(tensors, key=lambda it: -ITEM_SIZE[it[1].dtype])  # stable: the given order within a width
    header, offset = {METADATA_KEY: dict(metadata)} if metadata else {}, 0
    for name, src in items:
        header[name] = {"dtype": src.dtype, "shape": list(src.shape), "data_offsets": [offset, offset + src.nbytes]}
        offset += src.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    handles: dict[Path, object] = {}
    buffer = memoryview(bytearray(CHUNK))  # the one copy buffer, reused for every tensor
    try:
        with open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(blob)))
            dst.write(blob)
            for _, src in items:
                f = handles.get(src.path) or handles.setdefault(src.path, open(src.path, "rb"))  # noqa: SIM115
                f.seek(src.start)
                left = src.nbytes
                while left:
                    got = f.readinto(buffer[:min(CHUNK, left)])
                    if not got:
                        raise InputError("ended before its tensors did (truncated file)", path=src.path,
                                         fix="download the file again")
                    dst.write(buffer[:got])
                    left -= got
        os.replace(tmp, out)
    finally:
        for f in handles.values():
            f.close()
        tmp.unlink(missing_ok=True)
    return 8 + len(blob) + offset
