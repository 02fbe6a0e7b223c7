"""Self-supervised (SSL) audio features the v1 trainer aligns to: MERT (24 kHz) and mHuBERT (16 kHz).

Mirrors the fork's `Preprocessor.infer_mert_ssl` / `infer_mhubert_ssl` (woct0rdho/ACE-Step
`preprocess_dataset_new.py`; golden README "Preprocessing facts"), per utterance:

    (2, T) 48 kHz -> channel mean -> resample to the model rate (torchaudio-identical filter)
    -> valid length = T // (48000 / rate) -> zero mean / unit variance over the valid part
       (unbiased variance + 1e-7) -> chunks of 5 s (MERT) / 30 s (mHuBERT), the last zero-padded
    -> model(chunks).last_hidden_state -> keep (chunk_len + 319) // 320 frames per chunk -> concat.

The float32 features are stored with `schema.encode_ssl` (steps of RMS/16 per frame, entropy-coded:
per-frame cosine >= 0.9998 on heavy tails and outlier channels; docs/preprocess.md).

Models are read from local folders with transformers `AutoModel` (nothing is downloaded). The
official MERT folder needs its own modelling code (`auto_map` in config.json), which runs only with
an explicit `trust_remote_code=True` (`--trust_remote_code`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from acetune.audio.resample import resample
from acetune.errors import CheckpointError, UsageError

logger = logging.getLogger(__name__)

SOURCE_RATE = 48000
FRAME_STRIDE = 320  # both models' conv front-end hop, in samples at their own rate


@dataclass(frozen=True)
class SSLSource:
    """One SSL target: its column name (`schema.SSL_NAMES`), sample rate and chunk length."""

    name: str
    sample_rate: int
    chunk_seconds: int

    @property
    def chunk_samples(self) -> int:
        return self.sample_rate * self.chunk_seconds


MERT = SSLSource("mert", 24000, 5)  # m-a-p/MERT-v1-330M: 75 frames/s, 1024 wide
MHUBERT = SSLSource("m-hubert", 16000, 30)  # utter-project/mHuBERT-147: 50 frames/s, 768 wide
SOURCES = {s.name: s for s in (MERT, MHUBERT)}


def load_ssl_model(folder: str | Path, *, flag: str, trust_remote_code: bool = False,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An SSL encoder from a local transformers folder, in eval mode.

    Args:
        folder: holds config.json + weights (e.g. a download of m-a-p/MERT-v1-330M).
        flag: the command-line flag that named the folder (for error messages).
        trust_remote_code: allow the folder's own modelling code (MERT needs it).
    Raises:
        CheckpointError: missing folder / config / weights, or transformers cannot load it.
        UsageError: the folder needs remote code and `trust_remote_code` is False.
    """
    from transformers import AutoModel

    folder = Path(folder)
    fix = f"pass the downloaded model folder to {flag}"
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError("SSL model folder not found", path=folder, fix=fix)
    if not config_path.is_file():
        raise CheckpointError("missing config.json", path=config_path, fix=fix)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"unreadable config.json ({err})", path=config_path, fix=fix) from None
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError("this model runs its own Python code from the folder (config.json has auto_map)",
                         path=folder, fix="read that code, then add --trust_remote_code to allow it")
    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load SSL model: {reason[:300]}", path=folder, fix=fix) from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def ssl_input(wav: torch.Tensor, length: int, source: SSLSource) -> tuple[torch.Tensor, int]:
    """(2, T) float 48 kHz clip -> (normalised mono signal at the model rate, valid samples).

    `length` is the clip's valid length at 48 kHz (the reference passes the padded length).
    """
    mono = resample(wav.float().mean(dim=0, keepdim=True), SOURCE_RATE, source.sample_rate)[0]
    valid = int(length) // (SOURCE_RATE // source.sample_rate)
    part = mono[:valid]
    mono = (mono - part.mean()) / torch.sqrt(part.var() + 1e-7)  # unbiased var, as torch.var default
    return mono, valid


@torch.no_grad()
def ssl_features(model: torch.nn.Module, signal: torch.Tensor, valid: int, source: SSLSource,
                 batch_size: int = 8) -> torch.Tensor:
    """Run `model` over 5 s / 30 s chunks of a normalised signal (from `ssl_input`).

    Chunks are independent (same length, no attention mask), so `batch_size` does not change the
    result. Returns (sum_c ceil(len_c / 320), hidden) float32 on the CPU.
    """
    size = source.chunk_samples
    starts = list(range(0, valid, size))
    lengths = [min(size, valid - s) for s in starts]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for b in range(0, len(starts), batch_size):
        chunks = torch.stack([F.pad(signal[s:s + n], (0, size - n))
                              for s, n in zip(starts[b:b + batch_size], lengths[b:b + batch_size])])
        hidden = model(chunks.to(device, dtype)).last_hidden_state  # (B, frames, D)
        for h, n in zip(hidden, lengths[b:b + batch_size]):
            out.append(h[: (n + FRAME_STRIDE - 1) // FRAME_STRIDE].float().cpu())
    return torch.cat(out, dim=0)
