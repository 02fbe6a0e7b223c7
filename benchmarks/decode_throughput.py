"""Decode + resample throughput of `acetune.audio.io.audio_read` for a 3-minute song.

Prints seconds of audio per wall-clock second (median of --repeats) for wav, flac and mp3 at
44.1 kHz (resampled to 48 kHz, the common case) and 48 kHz (no resampling). Run:

    OMP_NUM_THREADS=1 python benchmarks/decode_throughput.py [--seconds 180] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from acetune.audio.io import audio_read


def measure(seconds: float, repeats: int, rates=(44100, 48000), formats=("wav", "flac", "mp3")) -> list[tuple]:
    """[(format, rate, median decode+resample seconds, audio s per wall s)] for one generated song."""
    rng = np.random.default_rng(0)
    subtypes = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for sr in rates:
            n = int(seconds * sr)
            t = np.arange(n) / sr
            wav = (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
            for ext in formats:
                path = Path(tmp) / f"song_{sr}.{ext}"
                sf.write(path, wav, sr, format=subtypes[ext][0], subtype=subtypes[ext][1])
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    audio_read(path)
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                out.append((ext, sr, med, seconds / med))
    return out


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: a 30 s song at 44.1 kHz, once."""
    seconds, repeats, rates = (30.0, 1, (44100,)) if quick else (180.0, 3, (44100, 48000))
    return [("decode + resample to 48 kHz", f"{ext} {sr} Hz, {seconds:.0f} s stereo", speed, "x realtime")
            for ext, sr, _, speed in measure(seconds, repeats, rates)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, song {args.seconds:.0f} s stereo", file=sys.stderr)
    print(f"{'format':<6} {'rate':>6} {'decode+resample s':>18} {'audio s / wall s':>17}")
    for ext, sr, med, speed in measure(args.seconds, args.repeats):
        print(f"{ext:<6} {sr:>6} {med:>18.2f} {speed:>17.0f}")


if __name__ == "__main__":
    main()
