"""The whole-preprocess case of `vs_fork.py` (`preprocess-official`): shared inputs and acetune's side.

`prepare(work_dir)` writes, once, what both sides read (see `vs_fork.py`'s docstring for the work):

    prep/songs/            the songs of `SONGS` (acetune's demo-song synthesiser) + fork sidecars
    prep/ds_acetune/       `acetune build-dataset` of that folder (acetune's input)
    prep/ckpt/             official layout: music_dcae_f8c8 + music_vocoder (the official-size codec of
                           the other cases), umt5-base (official config, det_init weights, the small
                           trained tokenizer of acetune's tests), vocab.json (the golden lyric vocab),
                           an empty ace_step_transformer/ (see the fork's side), and the two SSL models
                           in the HF cache layout under the fork's `cache_dir` (= --checkpoint_dir)
    prep/ssl/mert, prep/ssl/mhubert   HubertModel folders in the released models' shapes (det_init)

acetune's side runs `acetune preprocess` in-process (`cli.run_command`) with `LEVERS[variant]`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

# (stem index in demo_songs.SONGS, seconds, sample rate, extension): mixed lengths, rates and formats
# (2 minutes in all: a 2-core CPU takes ~10 minutes per side and run for them with these encoders)
SONGS = ((0, 20, 44100, "wav"), (1, 50, 48000, "mp3"), (2, 12, 44100, "mp3"),
         (3, 15, 48000, "wav"), (0, 10, 48000, "mp3"), (1, 13, 44100, "wav"))
MERT_REPO, MHUBERT_REPO = "m-a-p/MERT-v1-330M", "utter-project/mHuBERT-147"
SNAPSHOT = "0" * 40  # commit name of the stand-in snapshots in the fork's HF cache
# HubertModel shapes of the released SSL models (MERT-v1-330M is HuBERT-large-like at 24 kHz, mHuBERT-147
# HuBERT-base); the conv front end's stride is 320 for both
MERT_SHAPE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
MHUBERT_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
UMT5_BASE = dict(vocab_size=256384, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=False,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# acetune variants: (id, row label, extra flags). Every variant uses the fork's compute dtype and its one
# prompt per song, except "k4" (acetune's default of 4 prompt variants: more work than the fork's).
SAME = ["--dtype", "bfloat16", "--prompt_variants", "1"]
LEVERS = {
    "default": ("defaults (2 decode threads), bf16, 1 prompt", SAME),
    "pack": ("bf16 linear weights packed once (--pack_weights)", [*SAME, "--pack_weights"]),
    "inline": ("decoding inline (--num_workers 0)", [*SAME, "--num_workers", "0"]),
    "batch": ("--batch_songs", [*SAME, "--batch_songs"]),
    "compile": ("--compile", [*SAME, "--compile"]),
    "k4": ("4 prompt variants (acetune's default K)", ["--dtype", "bfloat16"]),
}


def _det_save(model, folder: Path) -> None:
    from acetune.parity.det_init import det_init_

    det_init_(model)
    model.save_pretrained(folder, safe_serialization=True)


def _ssl_folder(folder: Path, shape: dict, rate: int) -> None:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    if (folder / "config.json").is_file():
        return
    _det_save(HubertModel(HubertConfig(**shape)), folder)
    Wav2Vec2FeatureExtractor(sampling_rate=rate, do_normalize=False).save_pretrained(folder)


def _hf_cache_entry(cache_dir: Path, repo: str, folder: Path) -> None:
    """`folder` as the cached snapshot of `repo` (what `from_pretrained(repo, cache_dir=...)` finds offline)."""
    entry = cache_dir / f"models--{repo.replace('/', '--')}"
    snap = entry / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    for f in folder.iterdir():
        if not (snap / f.name).exists():
            (snap / f.name).symlink_to(f.resolve())


def prepare(work_dir: Path, codec_dir: Path, golden: Path) -> Path:
    """Write the shared inputs once (reused when present); returns `work_dir / "prep"`."""
    from acetune.audio.io import audio_write
    from acetune.cli import run_command
    from acetune.dataset import demo_songs
    from acetune.dataset.sidecars import sidecar_name
    from acetune.models.v1.text_encoder import _train_tiny_tokenizer
    from acetune.models.v1.transformer import default_config

    root = work_dir / "prep"
    ckpt, songs = root / "ckpt", root / "songs"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in ("music_dcae_f8c8", "music_vocoder"):
        if not (ckpt / name).exists():
            (ckpt / name).symlink_to((codec_dir / name).resolve())
    (ckpt / "ace_step_transformer").mkdir(exist_ok=True)  # config only: neither side's preprocess runs it
    (ckpt / "ace_step_transformer" / "config.json").write_text(
        json.dumps({"_class_name": "Transformer2DModel", **default_config()}, default=list))
    shutil.copyfile(golden / "lyrics" / "vocab.json", ckpt / "vocab.json")
    umt5 = ckpt / "umt5-base"
    if not (umt5 / "model.safetensors").is_file():
        from transformers import UMT5Config, UMT5EncoderModel

        umt5.mkdir(exist_ok=True)
        _train_tiny_tokenizer(vocab_size=160).save(str(umt5 / "tokenizer.json"))
        special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
        (umt5 / "special_tokens_map.json").write_text(json.dumps(special))
        (umt5 / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, **special}))
        _det_save(UMT5EncoderModel(UMT5Config(**UMT5_BASE)), umt5)
    _ssl_folder(root / "ssl" / "mert", MERT_SHAPE, 24000)
    _ssl_folder(root / "ssl" / "mhubert", MHUBERT_SHAPE, 16000)
    _hf_cache_entry(ckpt, MERT_REPO, root / "ssl" / "mert")
    _hf_cache_entry(ckpt, MHUBERT_REPO, root / "ssl" / "mhubert")
    manifest = json.dumps(SONGS)
    if not (root / "ds_acetune").is_dir() or not (songs / "songs.json").is_file() \
            or (songs / "songs.json").read_text() != manifest:
        shutil.rmtree(songs, ignore_errors=True)
        shutil.rmtree(root / "ds_acetune", ignore_errors=True)
        songs.mkdir()
        for i, (which, seconds, rate, ext) in enumerate(SONGS):
            song = demo_songs.SONGS[which]
            stem = f"{i}_{song.stem}"
            audio_write(songs / f"{stem}.{ext}", demo_songs.render_song(song, seconds, sr=rate, seed=i), rate)
            (songs / sidecar_name("fork", "prompt", stem)).write_text(song.prompt + "\n", encoding="utf-8")
            if song.lyrics:
                (songs / sidecar_name("fork", "lyrics", stem)).write_text(song.lyrics, encoding="utf-8")
        code = run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(root / "ds_acetune")])
        assert code == 0, "build-dataset failed"
        (songs / "songs.json").write_text(manifest)
    return root


def preprocess_args(root: Path, out: Path, variant: str) -> list[str]:
    """`acetune preprocess` arguments of one acetune variant (SSL on: both models)."""
    return ["--input_name", str(root / "ds_acetune"), "--output_name", str(out), "--checkpoint_dir",
            str(root / "ckpt"), "--mert_dir", str(root / "ssl" / "mert"), "--mhubert_dir",
            str(root / "ssl" / "mhubert"), "--storage_dtype", "bfloat16", *LEVERS[variant][1]]


def acetune_preprocess(root: Path, variant: str) -> dict:
    """One whole `acetune preprocess` run: wall seconds (encoders' load separately), songs, peak RSS."""
    import tempfile

    from vs_fork_side import peak_rss_gb

    from acetune.cli import run_command
    from acetune.dataset import schema
    from acetune.stages import preprocess as stage

    load = {}
    real_load = stage.load_encoders

    def timed_load(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_load(*args, **kwargs)
        finally:
            load["s"] = time.perf_counter() - start

    stage.load_encoders = timed_load
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        code = run_command("preprocess", preprocess_args(root, out, variant))
        total = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"acetune preprocess exited {code}")
        rows = len(schema.load_dataset(out)[0])
    return {"time_s": total, "encode_s": total - load["s"], "load_s": load["s"], "songs": rows, "peak_rss_gb": peak_rss_gb()}
