"""Encode throughput and peak memory of `MusicDCAE.encode` (48 kHz stereo -> latents) on the CPU.

For each model (tiny golden config / official config, random weights), duration (30 s, 3 min,
6 min) and mode (windowed = the default 1024-latent-frame windows; one-shot = window None), a fresh
subprocess builds the codec, encodes once to warm up on 2 s, then times one encode of the full clip.
Columns: audio seconds per wall second, the process's RSS after building the model and the clip
(base), and its peak RSS during the encode minus base (extra; ru_maxrss, so it is a high-water mark).

The official DCAE is slow on a CPU (~1.5 TFLOP per 30 s of audio), so by default it runs only 30 s;
pass --official-seconds 30 180 360 for the rest. Run:

    OMP_NUM_THREADS=1 python benchmarks/codec.py [--seconds 30 180 360] [--official-seconds 30]

Measured 2026-11-22, 1 thread on a shared 2-core box (audio s/wall s, extra MB):
    tiny      30 s  windowed 38.5 / 213   one-shot 50.7 / 213
    tiny     180 s  windowed 28.5 / 518   one-shot 39.9 / 755
    tiny     360 s  windowed 29.8 / 597   one-shot 28.1 / 1422
    official  30 s  windowed  1.1 / 869   (one window)
    official 180 s  windowed  0.5 / 2672  (--official-seconds 180 360)
    official 360 s  windowed  0.7 / 2977
The windowed extra levels off at the 1024-latent-frame window; what still grows (~0.5 MB per second
of audio) is the clip itself and its resampled copies.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(model: str, seconds: float, mode: str) -> dict:
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import MusicDCAE, official_dcae_config, tiny_dcae_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

    torch.manual_seed(0)
    if model == "tiny":
        codec = MusicDCAE(AutoencoderDC(**tiny_dcae_config()), ADaMoSHiFiGANV1(**tiny_vocoder_config()))
    else:
        codec = MusicDCAE(AutoencoderDC(**official_dcae_config()), ADaMoSHiFiGANV1())
    window = None if mode == "one-shot" else 1024
    codec.encode(0.1 * torch.randn(1, 2, 96000), window=window)  # warm-up
    audio = 0.1 * torch.randn(1, 2, int(seconds * 48000))
    base = _rss_mb()
    t0 = time.perf_counter()
    latents, _ = codec.encode(audio, window=window)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return dict(model=model, seconds=seconds, mode=mode, wall=wall, base=base, extra=max(0.0, peak - base),
                frames=latents.shape[-1])


def run_case(model: str, seconds: float, mode: str) -> dict:
    """One measurement in a fresh process (peak RSS is per process); raises RuntimeError if it failed."""
    out = subprocess.run([sys.executable, __file__, "--worker", model, str(seconds), mode],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: the tiny codec on 30 s only."""
    runs = [("tiny", 30, "windowed")] if quick else (
        [("tiny", s, m) for s in (30, 180, 360) for m in ("windowed", "one-shot")] + [("official", 30, "windowed")])
    out = []
    for model, seconds, mode in runs:
        r = run_case(model, seconds, mode)
        config = f"{model} DCAE+vocoder, {seconds} s, {mode}, fp32 CPU"
        out += [("codec encode speed", config, seconds / r["wall"], "x realtime"),
                ("codec encode extra memory", config, r["extra"], "MB")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="*", default=[30, 180, 360], help="durations for tiny")
    ap.add_argument("--official-seconds", type=float, nargs="*", default=[30], help="durations for official")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "SECONDS", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]), args.worker[2])))
        return
    runs = [("tiny", s, m) for s in args.seconds for m in ("windowed", "one-shot")]
    runs += [("official", s, "windowed") for s in args.official_seconds]
    print(f"torch threads {torch.get_num_threads()} (set OMP_NUM_THREADS), CPU, fp32", file=sys.stderr)
    print(f"{'model':<9} {'audio':>6} {'mode':<9} {'wall s':>8} {'audio s/wall s':>15} {'base MB':>8} {'extra MB':>9}")
    for model, seconds, mode in runs:
        try:
            r = run_case(model, seconds, mode)
        except RuntimeError as err:
            print(f"{model:<9} {seconds:>5.0f}s {mode:<9} failed: {err}")
            continue
        print(f"{model:<9} {seconds:>5.0f}s {mode:<9} {r['wall']:>8.2f} {seconds / r['wall']:>15.1f} "
              f"{r['base']:>8.0f} {r['extra']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
