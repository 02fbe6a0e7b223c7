"""Encode songs part by part with one encoder on the device at a time.

Every encoder is loaded once (to the CPU, in the compute dtype) by `Encoders.load`. A part of
`--part_size` songs then runs in phases, and each phase moves only its own encoder to the device
and back (`on_device`), so peak device memory is the largest single encoder plus its activations:

    1. per song, in order: lyric tokens, prompt variants, speaker embedding (CPU); audio decoded by
       `num_workers` threads ahead (`reader.prefetch`) while the codec (on the device) encodes the
       previous song; the 48 kHz audio is dropped after encoding, keeping only the small SSL inputs;
    2. text encoder (on the device): the K prompt variants of every song of the part (with
       --batch_songs, songs of similar prompt length batched together: `batching.encode_texts`);
    3. each SSL model in turn (on the device): its features for every sample of the part (with
       --batch_songs, the chunks of all samples pooled into full batches: `batching.ssl_features_pooled`).

Each song's audio is decoded, resampled and encoded once, whatever the number of prompt variants.

A song that cannot be decoded or encoded is reported (file, reason, fix) and left out; the others
of the part are written. Moving weights costs ~0.2 s per encoder per part on a PCIe GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acetune.audio.io import decode, get_audio_rules, is_silent
from acetune.dataset import schema
from acetune.dataset.sidecar_reader import INSTRUMENTAL
from acetune.dataset.song import SongRecord
from acetune.errors import AcetuneError, InputError
from acetune.preprocessing import batching, ssl
from acetune.preprocessing.reader import prefetch
from acetune.preprocessing.samples import (
    SPEAKER_DIM,
    load_speaker_embedding,
    plan_windows,
    prompt_variants,
    sample_key,
    song_rng,
)
from acetune.report import Report

logger = logging.getLogger(__name__)

LYRIC_MAX_TOKENS = 4096  # `lyric_token_idx[:4096]` in Text2MusicDataset.process
_FIX_ENCODE = "check the file plays; if the device ran out of memory use --split or a lower --max_duration"


@dataclass
class Settings:
    """What the pipeline needs from the command line."""

    device: torch.device
    storage_dtype: str = "float16"
    prompt_variants: int = 4
    seed: int = 0
    max_duration: float | None = 360.0  # seconds; None: no limit
    split: bool = False
    split_overlap: float = 10.0
    loudness_lufs: float | None = None
    ssl_batch_size: int = 8
    num_workers: int = 2
    # --batch_songs (off by default: batched rows equal song-by-song rows only to float rounding)
    text_batch_size: int = 1  # prompts per text-encoder pass, songs bucketed by prompt length (1: per song)
    pool_ssl: bool = False  # SSL chunks of all songs of a part share batches (False: song by song)


@dataclass
class Encoders:
    """Every encoder preprocess runs, resident on the CPU between phases."""

    codec: torch.nn.Module
    text: object  # family text encoder: `.model`, `.encode(texts, path="dataset")`
    lyrics: object  # family lyric tokenizer: `.tokenize_dataset_checked(text, song)`
    ssl_models: dict[str, torch.nn.Module] = field(default_factory=dict)  # schema SSL name -> model
    sample_rate: int = 48000
    speaker_dim: int = SPEAKER_DIM  # the transformer's speaker_embedding_dim

    @property
    def ssl_names(self) -> tuple[str, ...]:
        return tuple(n for n in schema.SSL_NAMES if n in self.ssl_models)


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Move `module` to `device` for the block, then back to the CPU (no-op when device is the CPU)."""
    if device.type == "cpu":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Sample:
    """One row in the making: a song, or one window of it with --split."""

    window: int
    wav_length: int  # samples at 48 kHz incl. the reference's 3 s padding
    duration: float  # seconds of real audio
    latents: torch.Tensor | None = None
    latent_length: int = 0
    ssl_inputs: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    ssl: dict[str, tuple[bytes, list[int]]] = field(default_factory=dict)  # name -> `schema.encode_ssl`


@dataclass
class SongWork:
    song: SongRecord
    size: int
    mtime_ns: int
    samples: list[Sample] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    lyric_ids: list[int] = field(default_factory=list)
    lyric_warning: str = ""
    speaker: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    failed: bool = False


def load_windows(song: SongRecord, s: Settings, sample_rate: int) -> list[tuple[int, torch.Tensor, float]]:
    """Decode a song and apply the reference rules: [(window index, (2, T) 48 kHz clip, seconds)].

    Without --split: crop to `max_duration` (at the file's rate, as the fork), pad to 3 s. With
    --split: full song, cut into overlapping `max_duration` windows; silent windows are dropped.
    """
    wav, sr = decode(song.filename)
    if s.loudness_lufs is not None:
        from acetune.audio.analysis import normalize_loudness

        wav = normalize_loudness(wav, sr, s.loudness_lufs)
    real = min(wav.shape[-1], int(sr * s.max_duration)) if (s.max_duration and not s.split) else wav.shape[-1]
    clip = get_audio_rules(wav, sr, None if s.split else s.max_duration)
    if clip is None:
        raise InputError("audio is silent (more than 95% of the padded 3 s+ clip is digital zero)",
                         path=song.filename, fix="remove the song or replace it with the real recording")
    seconds = real / sr
    if not s.split or not s.max_duration:
        return [(0, clip, seconds)]
    size = int(s.max_duration * sample_rate)
    real48 = min(clip.shape[-1], round(seconds * sample_rate))
    out = []
    for n, (a, b) in enumerate(plan_windows(clip.shape[-1], size, int(s.split_overlap * sample_rate))):
        piece = clip[:, a:b]
        if n > 0 and is_silent(piece):
            continue
        out.append((n, piece, max(0, min(b, real48) - a) / sample_rate))
    return out


def read_song(song: SongRecord, s: Settings, sample_rate: int):
    """(os.stat_result taken before decoding, windows) of one song; runs in a decoding thread (`reader.prefetch`)."""
    if not Path(song.filename).is_file():
        raise InputError("audio file not found", path=song.filename,
                         fix="check the filename column (relative paths are read from the current folder)")
    return os.stat(song.filename), load_windows(song, s, sample_rate)


def encode_part(songs: list[SongRecord], enc: Encoders, s: Settings, report: Report,
                on_song: Callable[[], None] = lambda: None) -> list[dict]:
    """Encode one part; returns its rows (schema columns). Failed songs are reported and left out."""
    work: list[SongWork] = []
    with on_device(enc.codec, s.device):
        for song, handle in prefetch(songs, lambda song: read_song(song, s, enc.sample_rate), s.num_workers):
            w = _song_inputs(song, handle, enc, s, report)
            del handle  # free the decoded audio
            if w is not None:
                work.append(w)
            on_song()
    work = [w for w in work if not w.failed]
    with on_device(enc.text.model, s.device):
        for w, (hidden, mask) in zip(work, batching.encode_texts(enc.text, [w.prompts for w in work],
                                                                  s.text_batch_size)):
            w.text, w.text_mask = hidden, mask
    for name in enc.ssl_names:
        with on_device(enc.ssl_models[name], s.device) as model:
            _ssl_phase(model, name, work, s, report)
    return [row for w in work if not w.failed for row in _rows(w, s, report)]


def _ssl_phase(model: torch.nn.Module, name: str, work: list[SongWork], s: Settings, report: Report) -> None:
    """SSL features of every sample of the part: pooled batches, or song by song (also to find which song
    failed when a pooled batch does)."""
    source = ssl.SOURCES[name]
    if s.pool_ssl:
        samples = [smp for w in work for smp in w.samples]
        try:
            feats = batching.ssl_features_pooled(model, [smp.ssl_inputs[name] for smp in samples], source,
                                                 s.ssl_batch_size)
        except (RuntimeError, ValueError):
            pass  # retried song by song below, so the report names the song
        else:
            for smp, f in zip(samples, feats):
                del smp.ssl_inputs[name]
                smp.ssl[name] = schema.encode_ssl(f)  # kept encoded: ~6 bits per value
            return
    for w in work:
        try:
            for smp in w.samples:
                signal, valid = smp.ssl_inputs.pop(name)
                smp.ssl[name] = schema.encode_ssl(ssl.ssl_features(model, signal, valid, source, s.ssl_batch_size))
        except (RuntimeError, ValueError) as err:
            _fail(w, report, f"{name} SSL features failed ({err.__class__.__name__}: {str(err)[:200]})")


def _fail(w: SongWork, report: Report, reason: str, fix: str = _FIX_ENCODE) -> None:
    w.failed = True
    report.problem(w.song.filename, reason, fix)


def _song_inputs(song: SongRecord, future, enc: Encoders, s: Settings, report: Report) -> SongWork | None:
    """Phase 1 for one song: text-side inputs, then (audio from `future`) latents and SSL inputs."""
    tokens = enc.lyrics.tokenize_dataset_checked(song.norm_lyrics, song.keys)
    # an instrumental (no lyrics, or build-dataset's marker) is not worth a warning
    instrumental = song.norm_lyrics.strip() in ("", INSTRUMENTAL)
    warnings = [] if instrumental else list(tokens.warnings)
    try:
        st, windows = future.result()
    except AcetuneError as err:
        report.add_error(err)
        return None
    except OSError as err:
        report.problem(song.filename, f"cannot read the file ({err.strerror or err})", "check the path and permissions")
        return None
    w = SongWork(song, st.st_size, st.st_mtime_ns)
    if tokens.ids is None:
        _fail(w, report, "; ".join(tokens.warnings) or "lyrics cannot be tokenized",
              "fix the lyrics (supported language) or leave them empty for an instrumental")
        return w
    for text in warnings:
        report.warning(song.filename, text, "check the lyrics file")
    w.lyric_ids = tokens.ids[:LYRIC_MAX_TOKENS]
    if len(tokens.ids) > LYRIC_MAX_TOKENS:
        warnings.append(f"lyrics cut from {len(tokens.ids)} to {LYRIC_MAX_TOKENS} tokens")
        report.warning(song.filename, warnings[-1], "shorten the lyrics or use --split")
    w.lyric_warning = "; ".join(warnings)
    w.prompts = prompt_variants(song.tags, song.recaption, s.prompt_variants, song_rng(song.keys, s.seed))
    w.speaker = torch.zeros(enc.speaker_dim)
    if song.speaker_emb_path:
        try:
            w.speaker = load_speaker_embedding(song.speaker_emb_path, enc.speaker_dim)
        except InputError as err:
            report.warning(err.path or song.filename, f"{err.reason}; zeros used", err.fix or "")
    for n, clip, seconds in windows:
        smp = Sample(n, clip.shape[-1], seconds)
        try:
            latents, lengths = enc.codec.encode(clip[None], torch.tensor([clip.shape[-1]]))
        except (RuntimeError, ValueError) as err:
            _fail(w, report, f"audio encoder failed ({err.__class__.__name__}: {str(err)[:200]})")
            return w
        smp.latents, smp.latent_length = latents[0].cpu(), int(lengths[0])
        for name in enc.ssl_names:
            smp.ssl_inputs[name] = ssl.ssl_input(clip, clip.shape[-1], ssl.SOURCES[name])
        w.samples.append(smp)
    return w


def _blob(row: dict, name: str, t: torch.Tensor, storage: str) -> None:
    if not schema.is_ssl_column(name):
        dtype = schema.blob_dtype(name, storage)
        if dtype.is_floating_point and not torch.isfinite(t.to(dtype)).all():
            raise OverflowError(f"{name} has values outside the {storage} range")
    data, shape = schema.encode_column(name, t, storage)
    row[name] = data
    row[schema.shape_column(name)] = shape


def _rows(w: SongWork, s: Settings, report: Report) -> list[dict]:
    """The schema rows of one encoded song (one per sample)."""
    rows = []
    try:
        for smp in w.samples:
            row = {
                schema.KEY: sample_key(w.song.keys, smp.window),
                schema.SOURCE_PATH: str(Path(w.song.filename)),
                schema.SOURCE_SIZE: w.size,
                schema.SOURCE_MTIME_NS: w.mtime_ns,
                schema.WINDOW: smp.window,
                schema.DURATION: smp.duration,
                schema.LATENT_LENGTH: smp.latent_length,
                schema.PROMPTS: w.prompts,
                schema.LYRIC_IDS: w.lyric_ids,
                schema.LYRICS_WARNING: w.lyric_warning,
            }
            _blob(row, schema.LATENTS, smp.latents, s.storage_dtype)
            _blob(row, schema.TEXT_EMBEDS, w.text, s.storage_dtype)
            _blob(row, schema.TEXT_MASK, w.text_mask, s.storage_dtype)
            _blob(row, schema.SPEAKER_EMB, w.speaker, s.storage_dtype)
            for name, (data, shape) in smp.ssl.items():
                row[schema.SSL_PREFIX + name], row[schema.shape_column(schema.SSL_PREFIX + name)] = data, shape
            rows.append(row)
    except OverflowError as err:
        report.problem(w.song.filename, str(err), "use --storage_dtype bfloat16 or float32")
        return []
    return rows
