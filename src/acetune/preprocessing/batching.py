"""Encode many songs per forward pass, with results equal to encoding each song on its own.

Two encoders are batched across the songs of a part:

- the text encoder (`encode_texts`): songs are sorted by their longest prompt (a length bucket) and
  packed until a batch holds `batch_size` prompts. Padded tokens are masked out of attention and
  UMT5's position bias depends only on the distance between two tokens, so a prompt's hidden
  states do not depend on how long its batch is; each song's rows are cut back to the length its
  own batch would have had (its longest prompt), so the stored shapes are unchanged. All of a
  song's prompts go into one batch, which keeps the states of its padding positions too.
- the SSL models (`ssl_features_pooled`): every 5 s / 30 s chunk of every sample of the part is
  pooled and run `batch_size` chunks at a time. Chunks all have the same length and these models
  have no attention mask or batch statistics, so no chunk sees another; batches stay full across
  song boundaries instead of ending with a short one per song.

Equality with the one-song-at-a-time path is asserted in tests/preprocessing/test_batching.py to
1e-5 absolute: other matrix shapes round differently, so it is not bit for bit, and a song's row
would depend on which songs share its part (shards, resumes, --part_size). That is why
`acetune preprocess --batch_songs` is off by default. The DCAE is not batched here: its EfficientViT
attention sums statistics over the whole song, so a padded shorter song would not give its own
latents, and the codec's `encode` runs clip by clip anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from acetune.preprocessing.ssl import FRAME_STRIDE, SSLSource

PROMPT_CHARS = 256  # the dataset path cuts every prompt to 256 characters before tokenizing


def length_buckets(lengths: Sequence[int], sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length: sorted by length, packed while the summed
    `sizes` stay <= batch_size (an item larger than batch_size gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    filled = 0
    for i in order:
        if batches and filled + sizes[i] <= batch_size:
            batches[-1].append(i)
            filled += sizes[i]
        else:
            batches.append([i])
            filled = sizes[i]
    return batches


def encode_texts(text_encoder, prompt_lists: Sequence[Sequence[str]],
                 batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(hidden (K, T, D), mask (K, T))] per song, as `text_encoder.encode(prompts, path="dataset")`.

    Args:
        text_encoder: the family text encoder (`.encode(texts, path=...)` -> hidden, mask).
        prompt_lists: each song's K prompt variants.
        batch_size: prompts per forward pass; <= 1 encodes song by song.
    """
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(prompt_lists)
    if batch_size <= 1:
        for i, prompts in enumerate(prompt_lists):
            hidden, mask = text_encoder.encode(list(prompts), path="dataset")
            out[i] = (hidden.cpu(), mask.cpu())
        return out
    longest = [max(len(p[:PROMPT_CHARS]) for p in prompts) for prompts in prompt_lists]
    for batch in length_buckets(longest, [len(p) for p in prompt_lists], batch_size):
        flat = [p for i in batch for p in prompt_lists[i]]
        hidden, mask = text_encoder.encode(flat, path="dataset")
        hidden, mask = hidden.cpu(), mask.cpu()
        start = 0
        for i in batch:
            k = len(prompt_lists[i])
            rows = slice(start, start + k)
            tokens = int(mask[rows].sum(dim=1).max())  # the padded length of this song's own batch
            out[i] = (hidden[rows, :tokens].clone(), mask[rows, :tokens].clone())
            start += k
    return out


@torch.no_grad()
def ssl_features_pooled(model: torch.nn.Module, inputs: Sequence[tuple[torch.Tensor, int]], source: SSLSource,
                        batch_size: int) -> list[torch.Tensor]:
    """`ssl.ssl_features` for many (signal, valid) inputs, their chunks pooled into full batches.

    Returns one (frames, hidden) float32 CPU tensor per input, equal to `ssl_features(model, signal,
    valid, source)` of that input alone.
    """
    size = source.chunk_samples
    chunks: list[tuple[int, int, int]] = []  # (input, start, length)
    for n, (_, valid) in enumerate(inputs):
        chunks += [(n, s, min(size, valid - s)) for s in range(0, valid, size)]
    param = next(model.parameters())
    pieces: list[list[torch.Tensor]] = [[] for _ in inputs]
    for b in range(0, len(chunks), batch_size):
        group = chunks[b:b + batch_size]
        batch = torch.stack([F.pad(inputs[n][0][s:s + k], (0, size - k)) for n, s, k in group])
        hidden = model(batch.to(param.device, param.dtype)).last_hidden_state  # (B, frames, D)
        for h, (n, _, k) in zip(hidden, group):
            pieces[n].append(h[: (k + FRAME_STRIDE - 1) // FRAME_STRIDE].float().cpu())
    return [torch.cat(p, dim=0) if p else torch.zeros(0, 0) for p in pieces]


def heavy_encoders(enc) -> dict[str, torch.nn.Module]:
    """{name: module} of the heavy encoders in `enc` that are loaded: v1: DCAE encoder, UMT5, SSL models;
    1.5: the VAE encoder and the text encoder (the modules `--compile` and `--pack_weights` act on)."""
    pipe = getattr(enc, "pipe", None)  # 1.5: an AceStepPipeline without its DiT
    candidates = {
        "dcae.encoder": getattr(getattr(getattr(enc, "codec", None), "dcae", None), "encoder", None),
        "text": getattr(getattr(enc, "text", None), "model", None),
        "vae.encoder": getattr(getattr(pipe, "vae", None), "encoder", None),
        "text_encoder": getattr(pipe, "text_encoder", None),
        **{f"ssl.{name}": model for name, model in getattr(enc, "ssl_models", {}).items()},
    }
    return {name: module for name, module in candidates.items() if isinstance(module, torch.nn.Module)}


def compile_encoders(enc, backend: str = "inductor") -> list[str]:
    """`torch.compile` the heavy modules of `enc` (`heavy_encoders`) in place; returns their names.

    `Module.compile` keeps the module objects and state-dict names. Compiling is lazy (the first song of
    each shape pays it), `dynamic=True` as song lengths vary; results equal eager up to float rounding.
    """
    modules = heavy_encoders(enc)
    for module in modules.values():
        module.compile(backend=backend, dynamic=True)
    return list(modules)
