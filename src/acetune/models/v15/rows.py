"""The 1.5 side of `acetune preprocess`: load the encoders once, encode a part of songs into rows.

`stages/preprocess.py` calls `load_preprocess_encoders` and `encode_part` of the family when it has
them (the v1 family runs `preprocessing.pipeline` instead); everything around them (sharding,
resume, parts, merge, report) is shared. Audio loading (crop to --max_duration, --split windows,
--loudness_lufs) is the v1 pipeline's `load_windows`, so both families cut songs the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from acetune.dataset.song import SongRecord
from acetune.errors import AcetuneError
from acetune.models.v15.conditioning import SongText, encode_song, load_encoders
from acetune.models.v15.schema import row

_FIX = "check the file plays; if the device ran out of memory use --split or a lower --max_duration"


@dataclass
class Encoders15:
    """What `encode_part` needs; `ssl_names` is empty (1.5 has no SSL targets)."""

    pipe: object  # AceStepPipeline without DiT (`conditioning.load_encoders`)
    sample_rate: int = 48000
    ssl_names: tuple[str, ...] = ()


def load_preprocess_encoders(checkpoint_dir: str | Path, dtype: torch.dtype = torch.float32,
                             device: str | torch.device = "cpu") -> Encoders15:
    pipe = load_encoders(checkpoint_dir, dtype=dtype, device=device)
    return Encoders15(pipe=pipe, sample_rate=pipe.sample_rate)


def encode_part(songs: list[SongRecord], enc: Encoders15, settings, report,
                on_song: Callable[[], None] = lambda: None) -> list[dict]:
    """Rows (`models.v15.schema.row`) of the songs; failed songs are reported and left out.

    Args:
        settings: `preprocessing.pipeline.Settings` (device, storage dtype, seed, crop / split).
        report: `acetune.report.Report`.
    """
    from acetune.preprocessing.pipeline import read_song
    from acetune.preprocessing.reader import prefetch
    from acetune.preprocessing.samples import sample_key

    enc.pipe.to(settings.device)
    rows: list[dict] = []
    # songs decode in `num_workers` threads while the encoders run on the previous one
    for song, decoded in prefetch(songs, lambda song: read_song(song, settings, enc.sample_rate), settings.num_workers):
        try:
            st, windows = decoded.result()
            del decoded
            text = SongText.from_song(song)
            song_rows = []
            for n, clip, seconds in windows:
                # v1's reference pads clips to 3 s; the 1.5 trainer encodes the audio as it is
                clip = clip[:, : max(1, round(seconds * enc.sample_rate))]
                # seeded by song key and window: reruns and shards draw the same VAE posterior sample
                seed = zlib.crc32(f"{settings.seed}:{song.keys}:{n}".encode())
                encoded = encode_song(enc.pipe, clip, text, seed=seed)
                song_rows.append(row(sample_key(song.keys, n), str(Path(song.filename)), st.st_size, st.st_mtime_ns, n,
                                seconds, encoded.latents, encoded.encoder_states, encoded.text_prompt,
                                     encoded.lyrics_prompt, storage=settings.storage_dtype))
            rows.extend(song_rows)
        except AcetuneError as err:
            report.add_error(err)
        except OSError as err:
            report.problem(song.filename, f"cannot read the file ({err.strerror or err})",
                           "check the path and permissions")
        except (RuntimeError, ValueError) as err:
            report.problem(song.filename, f"encoding failed ({err.__class__.__name__}: {str(err)[:200]})", _FIX)
        on_song()
    return rows
