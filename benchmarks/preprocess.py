"""Storage per audio-second and throughput of `acetune preprocess` (goal: <= 0.1 MB/s with SSL, < 0.01 without).

Two measurements:

1. measured: a tiny v1 checkpoint (official layout, generated weights) and two tiny HubertModels
   standing in for MERT / mHuBERT; N generated songs -> `acetune build-dataset` -> `acetune
   preprocess` without and with SSL. Prints songs/s on this CPU and MB on disk per audio-second.
   Tiny models have tiny widths, so their bytes say little about the real checkpoint:
2. official shapes: rows with the released models' output shapes (latents 8x16 at 10.77 frames/s,
   4 prompt variants x 40 tokens x 768, 200 lyric ids, MERT 1024-d at 75 Hz, mHuBERT 768-d at
   50 Hz) written through the same part writer, so the bytes on disk are what a real run stores.
   The fork stores 0.468 MB per audio-second with SSL (shared/facts/reference-baseline.md).

3. --levers: the encode loop (`pipeline.encode_part`, encoders loaded once, tiny models, MERT +
   mHuBERT stand-ins, songs of 0.6x / 1x / 1.4x --seconds; after one warm-up pass) with each
   throughput lever switched on in turn: decode threads ahead of the encoders (default), text
   encoder batched across songs in length buckets and SSL chunks pooled across songs (both
   `--batch_songs`), and optionally --compile. Prints songs/s and CPU s
   per song (the figure a busy machine moves least).

    OMP_NUM_THREADS=1 python benchmarks/preprocess.py [--songs 8] [--seconds 10]
    python benchmarks/preprocess.py --levers [--songs 16] [--seconds 10] [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FORK_MB_PER_S = 0.468


def measured(root: Path, songs: int, seconds: float, vocab: Path) -> list[tuple[str, float, float]]:
    from acetune.cli import run_command
    from acetune.dataset import schema
    from acetune.models.v1.tiny import save_tiny_checkpoint
    from acetune.preprocessing import store
    from audio_fixtures import make_audio
    from stages.conftest import save_tiny_hubert

    ckpt = save_tiny_checkpoint(root / "ckpt", transformer_overrides={"num_layers": 2}, lyric_vocab=vocab)
    mert, mhubert = save_tiny_hubert(root / "mert", 1), save_tiny_hubert(root / "mhubert", 2)
    folder = root / "songs"
    folder.mkdir()
    for i in range(songs):
        make_audio(folder / f"song{i}.wav", 2, 44100, seconds, seed=i)
        (folder / f"song{i}_prompt.txt").write_text("rock, pop, female vocals, 120 bpm")
    assert run_command("build-dataset", ["--data_dir", str(folder), "--output_name", str(root / "ds")]) == 0
    out = []
    for label, extra in (("tiny, no SSL", []), ("tiny, MERT + mHuBERT", ["--mert_dir", str(mert),
                                                                          "--mhubert_dir", str(mhubert)])):
        prep = root / f"prep_{len(out)}"
        t0 = time.perf_counter()
        code = run_command("preprocess", ["--input_name", str(root / "ds"), "--output_name", str(prep),
                                          "--checkpoint_dir", str(ckpt), *extra])
        wall = time.perf_counter() - t0  # includes loading the encoders
        assert code == 0
        ds, _ = schema.load_dataset(prep)
        audio_s = sum(ds[schema.DURATION])
        out.append((label, songs / wall, store.output_bytes(prep) / 1e6 / audio_s))
    return out


def levers(root: Path, songs: int, seconds: float, vocab: Path, repeats: int = 3,
           compile_: bool = False) -> list[tuple[str, float, float]]:
    """[(case, songs/s, CPU s per song)] of `encode_part` over the same songs, levers added one by one."""
    import statistics

    from acetune.cli import run_command
    from acetune.models.family import get_family
    from acetune.models.v1.tiny import save_tiny_checkpoint
    from acetune.preprocessing import batching, pipeline
    from acetune.report import Report
    from acetune.stages.preprocess import Args, load_encoders, read_songs
    from audio_fixtures import make_audio
    from stages.conftest import save_tiny_hubert

    ckpt = save_tiny_checkpoint(root / "ckpt", transformer_overrides={"num_layers": 2}, lyric_vocab=vocab)
    mert, mhubert = save_tiny_hubert(root / "mert", 1), save_tiny_hubert(root / "mhubert", 2)
    folder = root / "songs"
    folder.mkdir()
    tags = ["rock, pop, female vocals, 120 bpm", "jazz", "ambient, slow, soft pads, field recordings, 70 bpm, tape"]
    for i in range(songs):
        make_audio(folder / f"song{i}.wav", 2, 44100, seconds * (0.6, 1.0, 1.4)[i % 3], seed=i)
        (folder / f"song{i}_prompt.txt").write_text(tags[i % 3])
    assert run_command("build-dataset", ["--data_dir", str(folder), "--output_name", str(root / "ds")]) == 0
    args = Args(input_name=root / "ds", output_name=root / "unused", checkpoint_dir=ckpt, mert_dir=mert,
                mhubert_dir=mhubert)
    family = get_family(args.family)
    encoders = load_encoders(args, family, torch.float32)
    todo = read_songs(args.input_name, Report("bench"))
    cases = [("all levers off (song by song, inline decode)", dict(num_workers=0, text_batch_size=1, pool_ssl=False)),
             ("+ 2 decode threads ahead", dict(num_workers=2, text_batch_size=1, pool_ssl=False)),
             ("+ text batched across songs", dict(num_workers=2, text_batch_size=32, pool_ssl=False)),
             ("+ SSL chunks pooled (= --batch_songs)", dict(num_workers=2, text_batch_size=32, pool_ssl=True))]
    pipeline.encode_part(todo, encoders, pipeline.Settings(device=torch.device("cpu")), Report("warm-up"))
    out = []
    for label, kw in cases + ([("all on + --compile", cases[-1][1])] if compile_ else []):
        if label.endswith("--compile"):
            batching.compile_encoders(encoders)
            pipeline.encode_part(todo, encoders, pipeline.Settings(device=torch.device("cpu"), **kw), Report("warm"))
        settings = pipeline.Settings(device=torch.device("cpu"), **kw)
        walls, cpus = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            rows = pipeline.encode_part(todo, encoders, settings, Report("bench"))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            assert len(rows) == songs
        out.append((label, songs / statistics.median(walls), statistics.median(cpus) / songs))
    return out


def official_shapes(root: Path, seconds: float = 60.0) -> list[tuple[str, float]]:
    from acetune.dataset import schema
    from acetune.preprocessing import store

    frames = int(seconds * 48000 * 44100 / 48000 / 4096) + 1
    results = []
    for label, ssl_names in (("official shapes, no SSL", ()), ("official shapes, MERT + mHuBERT", ("mert", "m-hubert"))):
        row = {schema.KEY: "song", schema.SOURCE_PATH: "song.wav", schema.SOURCE_SIZE: 1, schema.SOURCE_MTIME_NS: 1,
               schema.WINDOW: 0, schema.DURATION: seconds, schema.LATENT_LENGTH: frames,
               schema.PROMPTS: ["a, b, c"] * 4, schema.LYRIC_IDS: list(range(200)), schema.LYRICS_WARNING: ""}
        tensors = {schema.LATENTS: torch.randn(8, 16, frames), schema.TEXT_EMBEDS: torch.randn(4, 40, 768),
                   schema.TEXT_MASK: torch.ones(4, 40), schema.SPEAKER_EMB: torch.zeros(512)}
        if ssl_names:
            tensors["ssl.mert"] = torch.randn(int(seconds * 75), 1024)
            tensors["ssl.m-hubert"] = torch.randn(int(seconds * 50), 768)
        for name, t in tensors.items():
            row[name], row[schema.shape_column(name)] = schema.encode_column(name, t, "float16")
        out = root / label.replace(" ", "_").replace(",", "")
        rows = [dict(row, **{schema.KEY: f"song{i}"}) for i in range(8)]
        store.write_part(out, "s000of001", rows, ssl_names)
        results.append((label, store.output_bytes(out) / 1e6 / (seconds * len(rows))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--vocab", type=Path, default=Path(__file__).resolve().parents[2] / "shared/golden/lyrics/vocab.json")
    parser.add_argument("--levers", action="store_true", help="time the encode loop with each lever on/off instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="with --levers: also time torch.compile")
    args = parser.parse_args()
    import os

    os.environ.setdefault("ACETUNE_NO_PROGRESS", "1")
    if args.levers:
        with tempfile.TemporaryDirectory() as tmp:
            table = levers(Path(tmp), args.songs, args.seconds, args.vocab, args.repeats, args.compile)
        print(f"\n{args.songs} songs of {0.6 * args.seconds:g}/{args.seconds:g}/{1.4 * args.seconds:g} s, tiny models "
              f"+ 2 SSL stand-ins, CPU, {torch.get_num_threads()} thread(s), median of {args.repeats}")
        print(f"{'case':46} {'songs/s':>8} {'CPU s/song':>11} {'vs off':>7}")
        for label, rate, cpu in table:
            print(f"{label:46} {rate:8.2f} {cpu:11.3f} {rate / table[0][1]:6.2f}x")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = measured(root, args.songs, args.seconds, args.vocab)
        shapes = official_shapes(root)
    print(f"\n{args.songs} songs x {args.seconds:g} s, CPU, {torch.get_num_threads()} thread(s)")
    print(f"{'case':34} {'songs/s':>8} {'MB per audio-s':>15} {'vs fork 0.468':>14}")
    for label, rate, mbs in rows:
        print(f"{label:34} {rate:8.2f} {mbs:15.4f} {mbs / FORK_MB_PER_S:13.1%}")
    for label, mbs in shapes:
        print(f"{label:34} {'':>8} {mbs:15.4f} {mbs / FORK_MB_PER_S:13.1%}")


if __name__ == "__main__":
    main()
