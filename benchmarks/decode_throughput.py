"""Decode + resample throughput of `acetune.audio.io.audio_read`, and the preprocess audio path, for a 3-minute song.

1. `audio_read`: seconds of audio per wall-clock second (median of --repeats) for wav, flac and mp3
   at 44.1 kHz (resampled to 48 kHz, the common case) and 48 kHz (no resampling).
2. `--path`: the audio path one song takes through `acetune preprocess` before the DCAE (the fork's
   `get_audio` + the first half of `MusicDCAE.encode`): decode a 44.1 kHz file -> reference rules
   (crop to 360 s, resample to 48 kHz, clamp, pad) -> resample to 44.1 kHz -> pad to 4096 samples ->
   log-mel -> normalise. Prints each step's median seconds and the total; run it with two
   PYTHONPATHs to compare two versions of the code on the same machine.

    OMP_NUM_THREADS=1 python benchmarks/decode_throughput.py [--seconds 180] [--repeats 3]
    OMP_NUM_THREADS=2 python benchmarks/decode_throughput.py --path [--format flac] [--repeats 5]
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


def _median_step(fn, repeats: int):
    """(last result, (median wall s, median CPU s of this process)); CPU time is what a busy machine moves least."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, (statistics.median(walls), statistics.median(cpus))


def audio_path(seconds: float, repeats: int, fmt: str = "flac", rate: int = 44100) -> list[tuple[str, tuple]]:
    """[(step, (median wall s, median CPU s))] of the preprocess audio path on one generated `fmt` song, plus the total."""
    import torch.nn.functional as F

    from acetune.audio.io import decode, get_audio_rules
    from acetune.audio.resample import resample
    from acetune.models.v1.dcae import HOP, MAX_MEL, MIN_MEL, TIME_MULTIPLE
    from acetune.models.v1.mel import LogMelSpectrogram

    mel = LogMelSpectrogram()
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_song(Path(tmp), seconds, rate, fmt)
        (wav, sr), t_decode = _median_step(lambda: decode(path), repeats)
        clip, t_rules = _median_step(lambda: get_audio_rules(wav, sr, 360), repeats)
        a44, t_44k = _median_step(lambda: resample(clip, 48000, 44100), repeats)

        def log_mel():
            padded = F.pad(a44[None], (0, -a44.shape[-1] % (TIME_MULTIPLE * HOP)))
            m = mel(padded, chunk_frames=4096)
            return ((m - MIN_MEL) / (MAX_MEL - MIN_MEL) - 0.5) / 0.5

        _, t_mel = _median_step(log_mel, repeats)
    steps = [(f"decode ({fmt}, {rate} Hz)", t_decode), ("rules: resample to 48 kHz, clamp, pad", t_rules),
             ("resample to 44.1 kHz", t_44k), ("log-mel + normalise", t_mel)]
    return steps + [("total", tuple(sum(t[i] for _, t in steps) for i in range(2)))]


def _write_song(folder: Path, seconds: float, sr: int, ext: str) -> Path:
    rng = np.random.default_rng(0)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
    path = folder / f"song_{sr}.{ext}"
    sf.write(path, wav, sr, subtype="MPEG_LAYER_III" if ext == "mp3" else "PCM_16")
    return path


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: a 30 s song at 44.1 kHz, once."""
    seconds, repeats, rates = (30.0, 1, (44100,)) if quick else (180.0, 3, (44100, 48000))
    return [("decode + resample to 48 kHz", f"{ext} {sr} Hz, {seconds:.0f} s stereo", speed, "x realtime")
            for ext, sr, _, speed in measure(seconds, repeats, rates)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--path", action="store_true", help="time the preprocess audio path step by step instead")
    ap.add_argument("--format", default="flac", choices=("wav", "flac", "mp3"), help="file format with --path")
    args = ap.parse_args()
    if args.path:
        print(f"torch threads {torch.get_num_threads()}, {args.seconds:.0f} s stereo song, median of {args.repeats}",
              file=sys.stderr)
        print(f"{'step':<40} {'wall s':>7} {'CPU s':>7}")
        for step, (wall, cpu) in audio_path(args.seconds, args.repeats, args.format):
            print(f"{step:<40} {wall:7.3f} {cpu:7.3f}")
        return
    print(f"torch threads {torch.get_num_threads()}, song {args.seconds:.0f} s stereo", file=sys.stderr)
    print(f"{'format':<6} {'rate':>6} {'decode+resample s':>18} {'audio s / wall s':>17}")
    for ext, sr, med, speed in measure(args.seconds, args.repeats):
        print(f"{ext:<6} {sr:>6} {med:>18.2f} {speed:>17.0f}")


if __name__ == "__main__":
    main()
