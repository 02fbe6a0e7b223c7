"""Per-song inputs of the preprocess stage: prompt variants, crop/split windows, speaker embedding.

Prompt variants reproduce the upstream prompt draw (`Text2MusicDataset.process`) without running
UMT5 during training. Upstream, every time a song is loaded, it shuffles the tags and joins them
with ", " (`["music"]` when there are none), puts that string in a list after the song's R
non-empty recaptions, and picks one entry uniformly: the tag string with probability 1/(R+1), each
recaption with 1/(R+1). We store the text embeddings of K variants and the trainer draws one
uniformly per step (`training.data.make_batch`), so the stored list is chosen to give those
probabilities: a song with recaptions stores ONE tag order plus its recaptions (up to K − 1 of
them, sorted by name; with R > K − 1 the rest are not stored and a recaption's share becomes
1/K); a song without recaptions stores up to K distinct tag orders (more shuffles, same 100 %
tag-string share). Duplicates are removed. The shuffles come from a RNG seeded with the song key
and `--seed`, so reruns and shards produce identical prompts.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import torch

from acetune.errors import InputError

SPEAKER_DIM = 512  # official speaker_embedding_dim; zeros when a song has none (reference `process`)
WINDOW_SEP = "#w"  # sample key of window n > 0 of song k: f"{k}#w{n}"; window 0 keeps the bare key


def song_rng(key: str, seed: int) -> random.Random:
    """A RNG that depends only on the song key and the seed (not on order, shard or process)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def prompt_variants(tags: list[str], recaption: dict[str, str], k: int, rng: random.Random) -> list[str]:
    """Up to `k` distinct prompts: shuffled tag orders, then recaptions (sorted by name).

    With recaptions: one tag order and up to k − 1 recaptions; without: up to k tag orders (module
    docstring: a uniform draw over the list then matches upstream's 1/(R+1) per option). Prompts
    are not cut here; the text encoder's "dataset" path cuts to 256 chars.
    """
    tags = list(tags) or ["music"]
    recaps = [v for _, v in sorted(recaption.items()) if isinstance(v, str) and v]
    n_orders = 1 if recaps else k
    recaps = recaps[: k - n_orders]
    orders: list[str] = []
    max_distinct = math.factorial(min(len(tags), 10))
    attempts = 0
    while len(orders) < min(n_orders, max_distinct) and attempts < 20 * n_orders:
        attempts += 1
        shuffled = tags[:]
        rng.shuffle(shuffled)
        text = ", ".join(shuffled)
        if text not in orders:
            orders.append(text)
    out: list[str] = []
    for text in orders + recaps:
        if text not in out:
            out.append(text)
    return out


def sample_key(song_key: str, window: int) -> str:
    return song_key if window == 0 else f"{song_key}{WINDOW_SEP}{window}"


def song_key_of(key: str, window: int) -> str:
    """Inverse of `sample_key`."""
    return key if window == 0 else key[: -len(f"{WINDOW_SEP}{window}")]


def plan_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[(start, end)] windows of `window` samples stepping by `window - overlap` over [0, total).

    The last window is moved back to end at `total`, so every window is full length; a clip no
    longer than `window` is one window.
    """
    if total <= window:
        return [(0, total)]
    step = window - overlap
    n = math.ceil((total - window) / step) + 1
    starts = [min(i * step, total - window) for i in range(n)]
    return [(s, s + window) for s in starts]


def load_speaker_embedding(path: str, dim: int = SPEAKER_DIM) -> torch.Tensor:
    """(dim,) float32 from .safetensors (first tensor), .npy, or .pt/.pth (weights_only).

    Raises:
        InputError: unreadable file or not `dim` values.
    """
    p = Path(path)
    fix = f"point speaker_emb_path at a {dim}-value embedding (.safetensors/.npy/.pt) or leave it empty"
    if not p.is_file():
        raise InputError("speaker embedding file not found", path=p, fix=fix)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(p))
            t = next(iter(tensors.values()))
        elif p.suffix == ".npy":
            import numpy as np

            t = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            t = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise InputError(f"cannot read speaker embedding ({err.__class__.__name__})", path=p, fix=fix) from None
    if not isinstance(t, torch.Tensor) or t.numel() != dim:
        raise InputError(f"speaker embedding must hold {dim} values", path=p, fix=fix)
    return t.reshape(dim).float()
