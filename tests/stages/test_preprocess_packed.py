"""`acetune preprocess --pack_weights` (bf16, CPU) packs the encoders' linear weights; rows equal the default run."""

from __future__ import annotations

import pytest
import torch

from acetune.cli import run_command
from acetune.dataset import schema
from acetune.preprocessing import packed
from audio_fixtures import make_audio


@pytest.mark.skipif(not packed.can_pack(torch.device("cpu"), torch.bfloat16), reason="no oneDNN bf16 on this CPU")
def test_packed_run_rows_are_bit_identical(tmp_path, tiny_ckpt, ssl_dirs, monkeypatch):
    songs = tmp_path / "songs"
    songs.mkdir()
    make_audio(songs / "alpha.wav", 2, 44100, 7.0, seed=1)  # two MERT chunks
    (songs / "alpha_prompt.txt").write_text("rock, pop, female vocals", encoding="utf-8")
    make_audio(songs / "beta.wav", 1, 48000, 2.0, seed=2)
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(tmp_path / "ds")]) == 0
    calls = []
    real = packed.pack_encoders
    monkeypatch.setattr(packed, "pack_encoders", lambda enc: calls.append(real(enc)) or calls[-1])
    mert, mhubert = ssl_dirs
    common = ["--input_name", tmp_path / "ds", "--checkpoint_dir", tiny_ckpt, "--mert_dir", mert,
              "--mhubert_dir", mhubert, "--device", "cpu", "--dtype", "bfloat16", "--storage_dtype", "float32"]
    rows = {}
    for name, extra in (("packed", ["--pack_weights"]), ("default", [])):  # the default does not pack
        out = tmp_path / name
        assert run_command("preprocess", [str(a) for a in (*common, "--output_name", out, *extra)]) == 0
        ds, _ = schema.load_dataset(out)
        rows[name] = {r[schema.KEY]: r for r in ds}
    assert len(calls) == 1 and {"text", "ssl.mert", "ssl.m-hubert"} <= set(calls[0])  # only with the flag
    packed_rows, plain_rows = rows["packed"], rows["default"]
    assert set(packed_rows) == set(plain_rows) == {"alpha", "beta"}
    for key, row in plain_rows.items():
        for column, value in row.items():
            assert packed_rows[key][column] == value, (key, column)  # every byte of every column
