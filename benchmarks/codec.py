"""DCAE encode / decode on long songs: each windowing option's speed, peak memory and distance to one pass.

Options (the DCAE part of `MusicDCAE.encode` / `decode_mel`; the mel front end and the vocoder are the
same for all and already exact in windows):

    one-shot    window None: the reference's single pass
    windows     the previous default: independent windows (encode 1024 latent frames with 128 of
                context per side, decode 512/128), each with its own attention sum
    stream      the default now (`dcae_stream`, 512-frame windows): local layers in windows, the
                EfficientViT attention in two passes with song-wide statistics

Input: a music-like demo song (`dataset/demo_songs.py`, drums + bass + chords + lead), 48 kHz stereo.
Decode input: the one-shot latents of that song. Every case runs in a fresh subprocess (peak RSS is
per process); columns are wall seconds, audio seconds per wall second, RSS after building the model
and the input (base), the peak RSS during the op minus base (extra; ru_maxrss high-water mark), and
rel L2 to the one-shot output (the one-shot outputs are cached in --cache between cases).

The tiny golden-structure codec runs by default; the official-size DCAE (det_init weights, 157 M
parameters, ~1.5 TFLOP per 30 s, several GB for a one-shot 6-minute song) only with --official:

    OMP_NUM_THREADS=1 python benchmarks/codec.py [--seconds 30 120] [--official --official-seconds 120 240 360]

--levers times the official encoder's speed levers in ONE process, variants interleaved (A B C A B C ...),
on a 30 s song: fp32 / bf16 in the default layout / bf16 channels-last, plus the mel front end; wall and
process CPU seconds, each as a pairwise ratio to bf16 in the default layout; rel L2 to the fp32 one pass:

    OMP_NUM_THREADS=2 python benchmarks/codec.py --levers [--lever-seconds 30 --lever-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MODES = ("one-shot", "windows", "stream")
OLD_WINDOWS = {"encode": (1024, 128), "decode": (512, 128)}  # (window, context) of the previous default


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _build(model: str):
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import MusicDCAE, official_dcae_config, tiny_dcae_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config
    from acetune.parity.det_init import det_init_

    torch.manual_seed(0)
    if model == "tiny":
        dcae, vocoder = AutoencoderDC(**tiny_dcae_config()), ADaMoSHiFiGANV1(**tiny_vocoder_config())
    else:  # the vocoder only computes the mel here (buffers), so its weights stay as constructed
        dcae, vocoder = AutoencoderDC(**official_dcae_config()), ADaMoSHiFiGANV1()
    det_init_(dcae)
    return MusicDCAE(dcae, vocoder)


def _song_mel(codec, seconds: float) -> torch.Tensor:
    from acetune.audio.resample import resample
    from acetune.dataset.demo_songs import SONGS, render_song

    audio = torch.from_numpy(render_song(SONGS[0], seconds))[None]
    return codec.dcae_input(resample(audio, 48000, 44100)[0][None])


def _independent_windows(fn, x: torch.Tensor, scale_in: int, scale_out: int, window: int, context: int):
    """The previous default: every window through `fn` on its own, cores kept and concatenated."""
    from acetune.models.v1.dcae_stream import plan_windows

    pieces = []
    for s, e, c0, c1 in plan_windows(x.shape[-1] // scale_in, window, context):
        y = fn(x[..., s * scale_in:e * scale_in])
        pieces.append(y[..., (c0 - s) * scale_out:(c1 - s) * scale_out])
    return torch.cat(pieces, dim=-1)


def _cached_latents(cache: Path, model: str, seconds: float) -> torch.Tensor | None:
    """One-shot latents of the song from an encode case of this length or longer (cropped), if cached."""
    from safetensors.torch import load_file

    from acetune.models.v1.dcae import latent_lengths_for

    frames = -(-int(latent_lengths_for(torch.tensor([seconds * 44100]), 44100)) // 1)
    for path in sorted(cache.glob(f"{model}-*-encode-one-shot.safetensors")):
        if float(path.name.split("-")[1]) >= seconds:
            return load_file(path)["out"][..., :frames].contiguous()
    return None


@torch.no_grad()
def worker(model: str, seconds: float, op: str, mode: str, cache: Path) -> dict:
    from safetensors.torch import load_file, save_file

    from acetune.models.v1.dcae import DCAE_WINDOW, ENCODE_WINDOW, TIME_MULTIPLE
    from acetune.models.v1.dcae_stream import decode_stream, encode_stream

    codec = _build(model)
    tag = f"{model}-{seconds:g}"
    if op == "encode":
        x = _song_mel(codec, seconds)
        run = {"one-shot": lambda: codec.dcae.encoder(x),
               "windows": lambda: _independent_windows(codec.dcae.encoder, x, TIME_MULTIPLE, 1, *OLD_WINDOWS[op]),
               "stream": lambda: encode_stream(codec.dcae.encoder, x, ENCODE_WINDOW, TIME_MULTIPLE)}[mode]
    else:
        x = _cached_latents(cache, model, seconds)
        if x is None:
            x = encode_stream(codec.dcae.encoder, _song_mel(codec, seconds), ENCODE_WINDOW, TIME_MULTIPLE)
        run = {"one-shot": lambda: codec.dcae.decoder(x),
               "windows": lambda: _independent_windows(codec.dcae.decoder, x, 1, TIME_MULTIPLE, *OLD_WINDOWS[op]),
               "stream": lambda: decode_stream(codec.dcae.decoder, x, DCAE_WINDOW)}[mode]
    base = _rss_mb()
    t0 = time.perf_counter()
    out = run()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    result = dict(wall=wall, base=base, extra=max(0.0, peak - base), frames=x.shape[-1])
    ref = cache / f"{tag}-{op}-one-shot.safetensors"
    if mode == "one-shot":
        save_file({"out": out.contiguous()}, ref)
    elif ref.is_file():
        one = load_file(ref)["out"]
        result["rel_l2"] = float((out - one).norm() / one.norm())
    return result


def run_case(model: str, seconds: float, op: str, mode: str, cache: Path) -> dict:
    """One measurement in a fresh process; raises RuntimeError if it failed."""
    out = subprocess.run([sys.executable, __file__, "--worker", model, str(seconds), op, mode, "--cache", str(cache)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """(what, config, figure, unit) rows for benchmarks/run.py; quick: tiny, 30 s, stream only."""
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="acetune-codec-"))
    cases = [("encode", m) for m in (("stream",) if quick else MODES)]
    cases += [] if quick else [("decode", m) for m in MODES]
    out = []
    for op, mode in cases:
        r = run_case("tiny", 30, op, mode, cache)
        config = f"tiny DCAE, 30 s song, {mode}, fp32 CPU"
        out += [(f"DCAE {op} speed", config, 30 / r["wall"], "x realtime"),
                (f"DCAE {op} extra memory", config, r["extra"], "MB")]
    return out


LEVERS = {  # name: (dtype, channels-last)
    "fp32, default layout": (torch.float32, False),
    "bf16, default layout": (torch.bfloat16, False),
    "bf16, channels-last": (torch.bfloat16, True),
}


@torch.no_grad()
def levers(seconds: float, repeats: int) -> None:
    """Print per-variant median seconds per encoder call, ratio to bf16 default layout, rel L2 to fp32."""
    import copy
    import statistics

    from acetune.audio.resample import resample
    from acetune.dataset.demo_songs import SONGS, render_song

    codec = _build("official")
    audio = resample(torch.from_numpy(render_song(SONGS[0], seconds))[None], 48000, 44100)[0][None]
    mel = codec.dcae_input(audio)
    reference = codec.dcae.encoder(mel)
    variants = {}
    for name, (dtype, channels_last) in LEVERS.items():
        enc, x = copy.deepcopy(codec.dcae.encoder).to(dtype), mel.to(dtype)
        if channels_last:
            enc, x = enc.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        variants[name] = (enc, x)
    times: dict[str, list[float]] = {name: [] for name in ["mel front end", *variants]}
    cpu: dict[str, list[float]] = {name: [] for name in times}  # process CPU seconds: steadier under load
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name in times:
            enc, x = variants.get(name, (None, None))
            t0, c0 = time.perf_counter(), time.process_time()
            codec.dcae_input(audio) if enc is None else enc(x)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base, base_cpu = times["bf16, default layout"][1:], cpu["bf16, default layout"][1:]
    print(f"official DCAE encoder, {seconds:g} s song ({mel.shape[-1] // 8} latent frames), "
          f"{torch.get_num_threads()} threads, {repeats} interleaved rounds after one warm-up")
    print(f"{'variant':<24} {'median s':>9} {'/ bf16 default':>15} {'CPU s':>7} {'CPU / bf16 default':>19} "
          f"{'rel L2 vs fp32':>15}")
    for name, t in times.items():
        t, c = t[1:], cpu[name][1:]
        ratio = statistics.median(a / b for a, b in zip(t, base))  # pairwise: one round's drift cancels
        cpu_ratio = statistics.median(a / b for a, b in zip(c, base_cpu))
        rel = "—"
        if name in variants:
            enc, x = variants[name]
            out = enc(x).float()
            rel = f"{float((out - reference).norm() / reference.norm()):.2e}"
        print(f"{name:<24} {statistics.median(t):>9.2f} {ratio:>15.2f} {statistics.median(c):>7.2f} {cpu_ratio:>19.2f} "
              f"{rel:>15}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="*", default=[30, 120], help="song lengths for the tiny DCAE")
    ap.add_argument("--official", action="store_true", help="also the official-size DCAE (several GB of RAM)")
    ap.add_argument("--official-seconds", type=float, nargs="*", default=[120, 240, 360],
                    help="song lengths for the official DCAE")
    ap.add_argument("--ops", nargs="*", default=["encode", "decode"], choices=["encode", "decode"])
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/acetune-codec-bench"),
                    help="folder for the one-shot outputs that the other modes are compared with")
    ap.add_argument("--levers", action="store_true", help="time the official encoder's speed levers (see above)")
    ap.add_argument("--lever-seconds", type=float, default=30.0)
    ap.add_argument("--lever-repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=4, metavar=("MODEL", "SECONDS", "OP", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.worker:
        model, seconds, op, mode = args.worker
        print(json.dumps(worker(model, float(seconds), op, mode, args.cache)))
        return
    if args.levers:
        levers(args.lever_seconds, args.lever_repeats)
        return
    runs = [("tiny", s) for s in args.seconds] + [("official", s) for s in (args.official_seconds if args.official else [])]
    print(f"torch threads {torch.get_num_threads()} (set OMP_NUM_THREADS), CPU, fp32", file=sys.stderr)
    print(f"{'model':<9} {'song':>6} {'op':<7} {'mode':<9} {'wall s':>8} {'x realtime':>10} {'base MB':>8} "
          f"{'extra MB':>9} {'rel L2 vs one-shot':>19}")
    for model, seconds in runs:
        for op in args.ops:
            for mode in args.modes:
                try:
                    r = run_case(model, seconds, op, mode, args.cache)
                except RuntimeError as err:
                    print(f"{model:<9} {seconds:>5.0f}s {op:<7} {mode:<9} failed: {err}", flush=True)
                    continue
                rel = "—" if mode == "one-shot" else (f"{r['rel_l2']:.2e}" if "rel_l2" in r else "n/a")
                print(f"{model:<9} {seconds:>5.0f}s {op:<7} {mode:<9} {r['wall']:>8.1f} {seconds / r['wall']:>10.2f} "
                      f"{r['base']:>8.0f} {r['extra']:>9.0f} {rel:>19}", flush=True)


if __name__ == "__main__":
    main()
