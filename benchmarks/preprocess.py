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

    OMP_NUM_THREADS=1 python benchmarks/preprocess.py [--songs 8] [--seconds 10]
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
    args = parser.parse_args()
    import os

    os.environ.setdefault("ACETUNE_NO_PROGRESS", "1")
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
