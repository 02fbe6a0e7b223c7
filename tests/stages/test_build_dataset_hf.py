"""`acetune build-dataset --hf_dataset`: Hub datasets (audio as bytes, audio as paths) and local Parquet/Arrow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import load_from_disk

from acetune import hub
from acetune.cli import run_command

AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets.Audio storage type


def audio_bytes(seconds: float, rate: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (0.2 * rng.standard_normal((int(seconds * rate), 2))).astype("float32"), rate, format=fmt)
    return buf.getvalue()


def parquet_bytes(rows: list[dict]) -> bytes:
    table = pa.table({
        "audio": pa.array([r["audio"] for r in rows], type=AUDIO),
        **{k: pa.array([r.get(k) for r in rows]) for k in rows[0] if k != "audio"}})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


SONGS = [  # SimpleTuner's ACEStep-Songs columns: prompt, lyrics (+ unused extras)
    {"audio": {"bytes": audio_bytes(1.5, 48000, "WAV", 1), "path": "first.wav"}, "prompt": "synthwave, retro",
     "lyrics": "[verse]\nneon lights", "audio_duration": 1.5, "score_lyrics": 7},
    {"audio": {"bytes": audio_bytes(2.0, 44100, "FLAC", 2), "path": None}, "prompt": "lofi piano",
     "lyrics": "", "audio_duration": 2.0, "score_lyrics": -1},
]


def build(*argv: str) -> int:
    return run_command("build-dataset", list(argv))


def test_hub_dataset_with_audio_bytes(hub_env, tmp_path, capsys):
    held_out = {"audio": {"bytes": audio_bytes(1.0, 48000, "WAV", 3), "path": "test.wav"}, "prompt": "x", "lyrics": ""}
    commit = hub_env.add("acetune-test/songs-bytes", {"data/train-00000-of-00001.parquet": parquet_bytes(SONGS),
                                                       "data/test-00000-of-00001.parquet": parquet_bytes([held_out]),
                                                       "README.md": b"# songs"}, repo_type="dataset")
    out = tmp_path / "songs_fn"
    assert build("--hf_dataset", "acetune-test/songs-bytes", "--split", "train", "--output_name", str(out)) == 0
    assert f"acetune-test/songs-bytes@{commit}" in capsys.readouterr().err  # provenance in the summary
    rows = {r["keys"]: r for r in load_from_disk(str(out))}
    assert sorted(rows) == ["first", "train-000001"]  # key: the stored file name, else split + row
    first, second = rows["first"], rows["train-000001"]
    assert first["tags"] == ["synthwave", "retro"] and first["norm_lyrics"] == "[verse]\nneon lights"
    assert second["tags"] == ["lofi piano"] and second["norm_lyrics"] == "[instrumental]"
    assert Path(first["filename"]).read_bytes() == SONGS[0]["audio"]["bytes"]  # written once, unchanged
    assert Path(second["filename"]).suffix == ".flac"  # no name stored: the format is sniffed
    assert first["duration"] == pytest.approx(1.5, abs=1e-3) and second["duration"] == pytest.approx(2.0, abs=1e-3)
    snapshot = hub.hub_cache_dir() / "datasets--acetune-test--songs-bytes" / "snapshots" / commit
    assert not (snapshot / "data" / "test-00000-of-00001.parquet").exists()  # other splits are not fetched

    mtime = Path(first["filename"]).stat().st_mtime_ns  # a rerun reuses the written audio
    assert build("--hf_dataset", "acetune-test/songs-bytes", "--output_name", str(out), "--offline") == 0
    assert Path(first["filename"]).stat().st_mtime_ns == mtime


def test_hub_audiofolder_with_audio_paths_and_upstream_columns(hub_env, tmp_path):
    meta = [{"file_name": "a.wav", "tags": "rock, guitar", "norm_lyrics": "[chorus]\nhey", "bpm": 120},
            {"file_name": "sub/b.flac", "tags": "ambient"}]
    hub_env.add("acetune-test/songs-folder", {
        "train/a.wav": audio_bytes(1.0, 48000, "WAV", 4), "train/sub/b.flac": audio_bytes(1.2, 32000, "FLAC", 5),
        "train/metadata.jsonl": "\n".join(json.dumps(m) for m in meta).encode()}, repo_type="dataset")
    out = tmp_path / "songs_fn"
    assert build("--hf_dataset", "acetune-test/songs-folder", "--caption_column", "tags",
                 "--output_name", str(out)) == 0
    rows = {r["keys"]: r for r in load_from_disk(str(out))}
    assert rows["a"]["tags"] == ["rock", "guitar"] and rows["a"]["norm_lyrics"] == "[chorus]\nhey"
    assert rows["a"]["bpm"] == 120 and rows["b"]["tags"] == ["ambient"]
    for r in rows.values():  # paths point into the HF cache: nothing copied
        assert Path(r["filename"]).is_relative_to(hub.hub_cache_dir()) and Path(r["filename"]).is_file()
    assert not (tmp_path / "songs_fn_audio").exists()


def test_local_parquet_and_saved_arrow_with_paths(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "c.wav").write_bytes(audio_bytes(1.0, 48000, "WAV", 6))
    rows = [{"audio": {"bytes": None, "path": "clips/c.wav"}, "prompt": "jazz", "lyrics": "la la"},
            {"audio": {"bytes": None, "path": "clips/missing.wav"}, "prompt": "gone", "lyrics": ""}]
    (tmp_path / "set.parquet").write_bytes(parquet_bytes(rows))
    out = tmp_path / "fn"
    assert build("--hf_dataset", str(tmp_path / "set.parquet"), "--output_name", str(out), "--strict") == 1
    assert "audio file clips/missing.wav not found" in capsys.readouterr().err  # reported, never silently dropped
    (row,) = load_from_disk(str(out))
    assert row["tags"] == ["jazz"] and Path(row["filename"]) == tmp_path / "clips" / "c.wav"

    from datasets import Dataset

    saved = tmp_path / "saved"
    Dataset.from_dict({"song": [{"bytes": audio_bytes(1.0, 48000, "WAV", 7), "path": "s.wav"}],
                       "caption": ["folk"]}).save_to_disk(str(saved))
    assert build("--hf_dataset", str(saved), "--audio_column", "song", "--caption_column", "caption",
                 "--output_name", str(tmp_path / "fn2")) == 0
    (row,) = load_from_disk(str(tmp_path / "fn2"))
    assert row["keys"] == "s" and row["tags"] == ["folk"]


def test_hf_dataset_errors(hub_env, tmp_path, capsys):
    assert build("--hf_dataset", "acetune-test/no-such-dataset", "--output_name", str(tmp_path / "x")) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("Error")]
    assert len(err) == 1 and "no dataset repo 'acetune-test/no-such-dataset'" in err[0]
    (tmp_path / "t.parquet").write_bytes(parquet_bytes(SONGS))
    assert build("--hf_dataset", str(tmp_path / "t.parquet"), "--audio_column", "wav", "--output_name",
                 str(tmp_path / "y")) == 1
    assert "no audio column 'wav'" in capsys.readouterr().err
    assert build("--hf_dataset", "x/y", "--data_dir", str(tmp_path), "--output_name", str(tmp_path / "z")) == 1
