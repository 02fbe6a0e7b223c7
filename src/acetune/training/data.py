"""Preprocessed dataset -> training batches (ACE-Step v1 schema, `acetune.dataset.schema`).

- `SongDataset[i]` decodes one row into float tensors (`Sample`); the DataLoader hands lists of
  them to the main process (`collate_fn=list`), so every random choice below is drawn there, from
  the global RNGs a checkpoint restores (bitwise resume, see `training/resume.py`).
- `make_batch(samples, ...)` picks a prompt variant per sample (python `random`), applies condition
  dropout (torch RNG, in the upstream `trainer.py` order text, speaker, lyrics), pads and masks.
- `LyricCache` holds the lyric encoder's output per sample id (and for the dropped-lyrics case) when
  no trainable weight is in the lyric path, so the Conformer runs once per song instead of per step.

Batch keys (N samples, W = max latent frames, T = max text tokens, L = max lyric tokens):
`keys` list[str]; `target_latents` (N, 8, 16, W); `attention_mask` (N, W); `encoder_text_hidden_states`
(N, T, D_text); `text_attention_mask` (N, T); `speaker_embeds` (N, D_spk); `lyric_token_idx` (N, L)
int64; `lyric_mask` (N, L); optional `lyric_hidden_states` (N, L, W_model) from the cache;
`ssl_hidden_states`: per SSL source a list of N (T_i, d) tensors, or None when a sample lacks it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from acetune.dataset import schema
from acetune.preprocessing.samples import song_rng


@dataclass
class ConditionDropout:
    """Probability of replacing each condition by zeros (upstream `trainer.py`: 0.15 / 0.5 / 0.15).

    Text: the UMT5 states become zeros (mask kept). Speaker: the embedding becomes zeros. Lyrics: the
    token ids and the lyric mask both become zeros.
    """

    text: float = 0.15
    speaker: float = 0.5
    lyrics: float = 0.15

    @classmethod
    def off(cls) -> ConditionDropout:
        return cls(0.0, 0.0, 0.0)


@dataclass
class Sample:
    """One decoded row (float32 tensors). Shapes as in `acetune.dataset.schema`."""

    key: str
    latents: torch.Tensor  # (8, 16, F)
    text_embeds: torch.Tensor  # (K, T, D)
    text_mask: torch.Tensor  # (K, T)
    lyric_ids: torch.Tensor  # (L,) int64, L >= 1
    lyric_mask: torch.Tensor  # (L,) 0 for the placeholder of empty lyrics
    speaker: torch.Tensor  # (D_spk,)
    ssl: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (T_ssl, d) float32 targets


def decode_row(row: dict, storage: str, ssl_names: tuple[str, ...] | list[str] = (),
               ssl_encoding: str = schema.SSL_ENCODING) -> Sample:
    """A dataset row -> `Sample`: latents cropped to `latent_length`, SSL targets decoded to float32.

    `ssl_encoding` is the dataset's (`DatasetMeta.ssl_encoding`; schema-1 datasets give directions).
    """
    latents = schema.row_tensor(row, schema.LATENTS, storage).float()
    latents = latents[..., : int(row[schema.LATENT_LENGTH])]
    ids = torch.tensor(list(row[schema.LYRIC_IDS]), dtype=torch.int64)
    mask = torch.ones(len(ids))
    if len(ids) == 0:  # no lyrics: one pad token with mask 0 (the encoder then contributes nothing)
        ids, mask = torch.zeros(1, dtype=torch.int64), torch.zeros(1)
    ssl = {}
    for name in ssl_names:
        t = schema.row_tensor(row, schema.SSL_PREFIX + name, storage, ssl_encoding)
        if t is not None:
            ssl[name] = t
    return Sample(
        key=str(row[schema.KEY]),
        latents=latents,
        text_embeds=schema.row_tensor(row, schema.TEXT_EMBEDS, storage).float(),
        text_mask=schema.row_tensor(row, schema.TEXT_MASK, storage).float(),
        lyric_ids=ids,
        lyric_mask=mask,
        speaker=schema.row_tensor(row, schema.SPEAKER_EMB, storage).float(),
        ssl=ssl,
    )


class SongDataset(torch.utils.data.Dataset):
    """Map-style view of a preprocessed dataset; rows are decoded on access (Arrow is memory-mapped).

    `prompt_draw="once"` keeps one prompt variant per sample for the whole run, chosen uniformly from
    the sample key and `seed` (so resumes and DDP ranks agree), as the fork bakes one prompt per song
    when it preprocesses; "per_step" keeps all K and `make_batch` draws one each step.
    """

    def __init__(self, hf_dataset, meta: schema.DatasetMeta, use_ssl: bool = True, prompt_draw: str = "per_step",
                 seed: int = 0):
        self.rows = hf_dataset
        self.meta = meta
        self.ssl_names = tuple(n for n in meta.ssl_names if n in schema.SSL_NAMES) if use_ssl else ()
        if prompt_draw not in ("per_step", "once"):
            raise ValueError(f"prompt_draw must be 'per_step' or 'once', not {prompt_draw!r}")
        self.prompt_draw, self.seed = prompt_draw, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        sample = decode_row(self.rows[int(index)], self.meta.storage_dtype, self.ssl_names,
                            self.meta.ssl_encoding)
        if self.prompt_draw == "once":
            k = song_rng(sample.key, self.seed).randrange(sample.text_embeds.shape[0])
            sample.text_embeds, sample.text_mask = sample.text_embeds[k:k + 1], sample.text_mask[k:k + 1]
        return sample


def _pad_stack(tensors: list[torch.Tensor], length: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad each tensor's last axis to `length` and stack."""
    return torch.stack([torch.nn.functional.pad(t, (0, length - t.shape[-1]), value=value) for t in tensors])


def _pad_time(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """Right-pad (T_i, D) tensors along T to `length` and stack -> (N, length, D)."""
    return torch.stack([torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[0])) for t in tensors])


class LyricCache:
    """`encode_lyrics` output per sample id, computed once in eval mode (no Conformer dropout).

    Valid only while no trainable weight is in the lyric path (`lora.touches_lyric_encoder`).
    `dropped` holds the output for the dropped-lyrics input (ids 0, mask 0) of the same length.
    Stored on CPU in the compute dtype: T_lyric x width values per sample (1 MB for 200 tokens at
    the official width in bf16).
    """

    def __init__(self):
        self.kept: dict[str, torch.Tensor] = {}
        self.dropped: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def fill(self, model, samples, device: torch.device, dtype: torch.dtype) -> None:
        was_training = model.training
        model.eval()
        try:
            for s in samples:
                if s.key in self.kept:
                    continue
                ids, mask = s.lyric_ids[None].to(device), s.lyric_mask[None].to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    self.kept[s.key] = model.encode_lyrics(ids, mask)[0].to("cpu", dtype)
                    self.dropped[s.key] = model.encode_lyrics(torch.zeros_like(ids), torch.zeros_like(mask))[0].to(
                        "cpu", dtype)
        finally:
            model.train(was_training)

    def __len__(self) -> int:
        return len(self.kept)


def make_batch(samples: list[Sample], *, dropout: ConditionDropout | None = None, variant: int | None = None,
               lyric_cache: LyricCache | None = None, ssl_names: tuple[str, ...] = ()) -> dict:
    """Collate samples into one padded batch (keys in the module docstring).

    Args:
        dropout: condition dropout probabilities; None = off (draws no random numbers).
        variant: prompt variant for every sample; None = `random.randrange(K)` per sample.
        lyric_cache: when given, `lyric_hidden_states` is filled from it (kept or dropped per sample).
        ssl_names: SSL sources in the transformer's order; a source missing from any sample is None.
    """
    n = len(samples)
    width = max(s.latents.shape[-1] for s in samples)
    chosen = [min(variant, s.text_embeds.shape[0] - 1) if variant is not None else random.randrange(s.text_embeds.shape[0])
              for s in samples]
    text = [s.text_embeds[c] for c, s in zip(chosen, samples)]
    text_len = max(t.shape[0] for t in text)
    lyric_len = max(s.lyric_ids.shape[0] for s in samples)
    batch = {
        "keys": [s.key for s in samples],
        "target_latents": _pad_stack([s.latents for s in samples], width),
        "attention_mask": _pad_stack([torch.ones(s.latents.shape[-1]) for s in samples], width),
        "encoder_text_hidden_states": _pad_time(text, text_len),
        "text_attention_mask": _pad_stack([s.text_mask[c] for c, s in zip(chosen, samples)], text_len),
        "speaker_embeds": torch.stack([s.speaker for s in samples]),
        "lyric_token_idx": _pad_stack([s.lyric_ids for s in samples], lyric_len),
        "lyric_mask": _pad_stack([s.lyric_mask for s in samples], lyric_len),
    }
    drop_lyrics = torch.zeros(n, dtype=torch.bool)
    if dropout is not None:  # upstream trainer.py order: text, speaker, lyrics; one draw per sample each
        drop_text = torch.rand(n) < dropout.text
        drop_speaker = torch.rand(n) < dropout.speaker
        drop_lyrics = torch.rand(n) < dropout.lyrics
        batch["encoder_text_hidden_states"][drop_text] = 0.0
        batch["speaker_embeds"][drop_speaker] = 0.0
        batch["lyric_token_idx"][drop_lyrics] = 0
        batch["lyric_mask"][drop_lyrics] = 0.0
    if lyric_cache is not None:
        states = [(lyric_cache.dropped if d else lyric_cache.kept)[s.key] for s, d in zip(samples, drop_lyrics.tolist())]
        batch["lyric_hidden_states"] = _pad_time(states, lyric_len)
    batch["ssl_hidden_states"] = [
        [s.ssl[name] for s in samples] if all(name in s.ssl for s in samples) else None for name in ssl_names
    ]
    return batch


def batch_to(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a batch to `device`, floating tensors to `dtype` (the fork's `_to_bf16`); ids stay int64."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    return {k: move(v) for k, v in batch.items()}
