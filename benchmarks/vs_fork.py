"""acetune beside the woct0rdho/ACE-Step fork: the same work on both sides, interleaved, one markdown table.

Each case runs the fork's own code (imported from `--fork_dir`, run by `--fork_python`, a scratch venv
that is never part of this repo) and acetune's, each in a fresh process, alternated fork, acetune,
fork, acetune (`--rounds`); every process does 2 warm-ups + 5 timed calls and reports their median and
its peak RSS (whole process, imports included). A figure is the median over the rounds; the ratio is the
median of the per-round ratios (each pair ran back to back). 2 torch threads on both sides.

The work of each case (identical inputs on both sides; weights: the golden deterministic rule, no
downloads):

  train-official-10s, train-medium-10s, train-medium-60s
      One LoRA training step of the v1 transformer (official config, or medium: 6 layers, 8 x 128 = 1024
      wide, official lyric encoder), bf16, 10 s / 60 s of latents (108 / 646 frames), batch 1, text 20
      tokens, lyrics 200 tokens, SSL targets 1024-d at 75 Hz and 768-d at 50 Hz (SSL losses on), rsLoRA
      r 64 alpha 1 on to_q/to_k/to_v/to_out.0, gradient checkpointing as the fork does it (every
      block), then clip-grad-norm 1.0 + AdamW + LR-scheduler step + zero_grad.
      fork: `trainer_new.Pipeline.training_step` (its noise, timestep, loss and logging code) under
      `torch.autocast("cpu", bfloat16)` (Lightning's bf16-mixed) on the whole model cast to bf16, with
      the optimizer and scheduler of its `configure_optimizers`; the lyric encoder runs in every step.
      acetune: `benchmarks/train.py::measure` (the trainer's step) twice: "lyric encoder each step"
      (the fork's work) and "cached lyric path" (acetune's default: encoder output computed once).
  dcae-encode-official-30s
      30 s of 48 kHz stereo -> latents with the official-size DCAE in bf16: resample to 44.1 kHz,
      log-mel, normalise, DCAE encoder, scale. fork: `MusicDCAE.encode`; acetune: `MusicDCAE.encode`.
      Each side casts the input as its preprocess does (fork: bf16 audio; acetune: fp32 audio).
  audio-path-180s
      A 180 s 44.1 kHz stereo 16-bit WAV -> normalised DCAE input: decode, the loader's rules (stereo,
      clamp, pad), resample to 48 kHz, resample to 44.1 kHz, log-mel, normalise; each side in the dtype
      its preprocess uses (fork: bf16 after loading, as `Preprocessor.preprocess` casts the batch;
      acetune: fp32). fork: `Text2MusicDataset.get_audio`, then `MusicDCAE.resampler`, `forward_mel`
      and `transform` with the two lines of `encode` between them (pad to 4096, min/max scaling);
      acetune: `audio.io.load_song`, `audio.resample.resample`, `MusicDCAE.dcae_input`.

The fork's scratch env (never committed; shown for torch 2.13 CPU): the fork's files at its commit in
/tmp/fork-src; `python -m venv --system-site-packages /tmp/scratch-fork` (global torch, diffusers,
transformers, peft, datasets); `pip install pytorch-lightning==2.6.6 natsort==8.4.0 loguru==0.7.3
hangul-romanize==0.1.0 spacy==3.8.18`; `pip install --no-deps torchaudio==2.11.0` with its lib/*.so
moved away (only its pure-Python transforms are used); no torchvision.

Stand-ins on the fork side (the scratch env cannot load the PyPI torchaudio/torchvision CUDA builds'
C++ ops on torch 2.13 CPU; pure-Python parts of torchaudio are used as they are): `torchaudio.load` =
soundfile decoding to float32 channels-first (what torchaudio's soundfile backend returned), and
`torchvision.transforms.Normalize(0.5, 0.5)` = (x - 0.5) / 0.5, installed only if the real ones fail.

    python benchmarks/vs_fork.py --case train-medium-10s            # one case, interleaved
    python benchmarks/vs_fork.py                                     # every case (official ones: ~8 GB)
    python benchmarks/vs_fork.py --case audio-path-180s --acetune_only   # our side alone, quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vs_fork_side import fork_env, fork_other, fork_train, peak_rss_gb, time_calls  # noqa: E402

TRAIN_CASES = {"train-official-10s": ("official", 10), "train-medium-10s": ("medium", 10),
               "train-medium-60s": ("medium", 60)}
OTHER_CASES = {"dcae-encode-official-30s": 30, "audio-path-180s": 180}
CASES = (*TRAIN_CASES, *OTHER_CASES)
BIG = {"train-official-10s"}  # ~8 GB: run under the shared big-memory lock
# acetune variants per case: (variant id, label)
VARIANTS = {case: [("lyric-each-step", "lyric encoder each step"), ("cached", "cached lyric path")]
            for case in TRAIN_CASES}
WORK = {"train-official-10s": "LoRA train step, official config, bf16, 10 s",
        "train-medium-10s": "LoRA train step, medium config, bf16, 10 s",
        "train-medium-60s": "LoRA train step, medium config, bf16, 60 s",
        "dcae-encode-official-30s": "DCAE encode, official config, bf16, 30 s",
        "audio-path-180s": "audio path, 180 s song (decode, 48k, 44.1k, log-mel, normalise)"}


# ---- shared inputs, made once by the parent (acetune's env) ----

def prepare(case: str, work_dir: Path) -> None:
    """Write what both sides read: a generated official-layout codec checkpoint, the input audio."""
    import numpy as np
    import soundfile

    work_dir.mkdir(parents=True, exist_ok=True)
    if case in OTHER_CASES and not (work_dir / "codec" / "music_dcae_f8c8" / "config.json").is_file():
        from diffusers import AutoencoderDC

        from acetune.models.v1.dcae import MusicDCAE, official_dcae_config
        from acetune.models.v1.vocoder import ADaMoSHiFiGANV1
        from acetune.parity.det_init import det_init_

        dcae, vocoder = AutoencoderDC(**official_dcae_config()), ADaMoSHiFiGANV1()
        det_init_(dcae)
        det_init_(vocoder)
        MusicDCAE(dcae, vocoder).save_pretrained(work_dir / "codec")
    if case == "audio-path-180s" and not (work_dir / "song180.wav").is_file():
        rate, n = 44100, 180 * 44100
        t = np.arange(n) / rate
        rng = np.random.default_rng(0)
        tone = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((110.0, 220.0, 330.0, 440.0)))
        left = 0.15 * tone + 0.02 * rng.standard_normal(n)
        right = 0.15 * np.roll(tone, 441) + 0.02 * rng.standard_normal(n)
        soundfile.write(work_dir / "song180.wav", np.stack([left, right], 1).astype(np.float32), rate,
                        subtype="PCM_16")
    if case == "dcae-encode-official-30s" and not (work_dir / "audio30_48k.npy").is_file():
        rng = np.random.default_rng(1)
        t = np.arange(30 * 48000) / 48000
        wav = 0.2 * np.sin(2 * np.pi * 220.0 * t)[None] + 0.05 * rng.standard_normal((2, t.size))
        np.save(work_dir / "audio30_48k.npy", wav.astype(np.float32))


# ---- acetune's side ----

def acetune_side(case: str, variant: str, work_dir: Path, warmup: int, repeats: int) -> dict:
    import torch

    if case in TRAIN_CASES:
        import train as train_bench

        config, seconds = TRAIN_CASES[case]
        r = train_bench.measure(config, "bf16", f"{seconds}s", repeats=repeats, warmup=warmup,
                                cached_lyrics=variant == "cached")
        return {"time_s": r["time_s"], "peak_rss_gb": r["peak_rss_gb"]}
    from acetune.models.v1.dcae import MusicDCAE

    if case == "dcae-encode-official-30s":
        import numpy as np

        codec = MusicDCAE.from_pretrained(work_dir / "codec", dtype=torch.bfloat16)
        wav = torch.from_numpy(np.load(work_dir / "audio30_48k.npy"))[None]

        def run():
            codec.encode(wav, torch.tensor([wav.shape[-1]]))
    else:
        from acetune.audio.io import load_song
        from acetune.audio.resample import resample

        codec = MusicDCAE.from_pretrained(work_dir / "codec")
        path = work_dir / "song180.wav"

        def run():
            with torch.inference_mode():
                return codec.dcae_input(resample(load_song(path), 48000, 44100)[None])
    return {"time_s": time_calls(run, warmup, repeats), "peak_rss_gb": peak_rss_gb()}


# ---- the parent: interleaved rounds and the table ----

def run_worker(args, side: str, case: str, variant: str) -> dict:
    """One measurement in a fresh process of `side`'s Python; raises RuntimeError with the last error line."""
    cmd = [args.fork_python if side == "fork" else sys.executable, __file__, "--worker", side, case, variant,
           "--fork_dir", str(args.fork_dir), "--work_dir", str(args.work_dir),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), ACETUNE_NO_PROGRESS="1")
    if side == "fork":
        env.pop("PYTHONPATH", None)
    if case in BIG and not args.no_lock:
        cmd = ["flock", args.lock, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.fork_dir if side == "fork" else None)
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        raise RuntimeError((res.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(lines[-1])


def summarize(fork_runs: list[dict], ours: list[dict], key: str) -> tuple[float | None, float, float | None]:
    """(fork median, acetune median, median of the per-round acetune/fork ratios); fork None if not run."""
    mine = statistics.median(r[key] for r in ours)
    if not fork_runs:
        return None, mine, None
    ratios = [o[key] / f[key] for f, o in zip(fork_runs, ours)]
    return statistics.median(r[key] for r in fork_runs), mine, statistics.median(ratios)


def format_rows(case: str, fork_runs: list[dict], ours: dict[str, list[dict]]) -> list[str]:
    """Markdown rows `work | fork | acetune | acetune/fork` for one case (time; peak RSS for training)."""
    out = []
    keys = [("time_s", "s", "")] + ([("peak_rss_gb", "GB", "peak RSS, ")] if case in TRAIN_CASES else [])
    for key, unit, prefix in keys:
        for variant, label in VARIANTS.get(case, [("default", "")]):
            f, a, ratio = summarize(fork_runs, ours[variant], key)
            work = f"{prefix}{WORK[case]}" + (f" ({label})" if label else "")
            fork = "—" if f is None else f"{f:.3g} {unit}"
            out.append(f"| {work} | {fork} | {a:.3g} {unit} | " + ("—" if ratio is None else f"**{ratio:.2f}**") + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="*", choices=CASES, default=list(CASES), help="cases to run (default: all)")
    ap.add_argument("--acetune_only", action="store_true", help="time acetune's side alone (no fork, no ratios)")
    ap.add_argument("--fork_dir", type=Path, default=Path("/tmp/fork-src"), help="the fork's source tree")
    ap.add_argument("--fork_python", default="/tmp/scratch-fork/bin/python", help="Python of the fork's scratch venv")
    ap.add_argument("--work_dir", type=Path, default=Path("/tmp/acetune-vs-fork"),
                    help="generated checkpoint and audio shared by both sides (made once, reused)")
    ap.add_argument("--rounds", type=int, default=2, help="fork/acetune alternations per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per process")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per process (the median is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--lock", default="/tmp/acetune-bigmem.lock", help="flock file for the official-size cases")
    ap.add_argument("--no_lock", action="store_true", help="do not take the big-memory lock (caller holds it)")
    ap.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        side, case, variant = args.worker
        if side == "fork":
            fork_env(args.fork_dir)
            r = (fork_train(args.fork_dir, *TRAIN_CASES[case], args.warmup, args.repeats) if case in TRAIN_CASES
                 else fork_other(case, args.work_dir, args.warmup, args.repeats))
        else:
            r = acetune_side(case, variant, args.work_dir, args.warmup, args.repeats)
        print(json.dumps(r))
        return 0
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
          f"{args.threads} threads, {args.rounds} rounds x (fork, acetune), {args.warmup} + {args.repeats} calls",
          file=sys.stderr)
    print("| work | fork | acetune | acetune/fork |\n|---|---|---|---|", flush=True)
    failed = 0
    for case in args.case:
        prepare(case, args.work_dir)
        fork_runs, ours = [], {v: [] for v, _ in VARIANTS.get(case, [("default", "")])}
        try:
            for _ in range(args.rounds):
                if not args.acetune_only:
                    fork_runs.append(run_worker(args, "fork", case, "default"))
                for variant in ours:
                    ours[variant].append(run_worker(args, "acetune", case, variant))
                print(f"  {case}: fork {[round(r['time_s'], 3) for r in fork_runs]} acetune "
                      f"{ {v: [round(r['time_s'], 3) for r in rs] for v, rs in ours.items()} }", file=sys.stderr)
        except RuntimeError as err:
            print(f"| {WORK[case]} | failed: {err} | | |", flush=True)
            failed += 1
            continue
        print("\n".join(format_rows(case, fork_runs, ours)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
