"""Decode + resample throughput of `acetune.audio.audio_read` for a 3-minute song.

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

from acetune.audio import audio_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}, song {args.seconds:.0f} s stereo", file=sys.stderr)
    print(f"{'format':<6} {'rate':>6} {'decode+resample s':>18} {'audio s / wall s':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for sr in (44100, 48000):
            n = int(args.seconds * sr)
            t = np.arange(n) / sr
            wav = (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
            for ext, fmt, sub in ((".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"),
                                  (".mp3", "MP3", "MPEG_LAYER_III")):
                path = Path(tmp) / f"song_{sr}{ext}"
                sf.write(path, wav, sr, format=fmt, subtype=sub)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    audio_read(path)
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                print(f"{ext[1:]:<6} {sr:>6} {med:>18.2f} {args.seconds / med:>17.0f}")


if __name__ == "__main__":
    main()
