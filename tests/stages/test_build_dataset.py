"""build-dataset end to end: every sidecar convention, bad input in the report, --strict, fork shim."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import load_from_disk

from acetune.cli import run_command
from audio_fixtures import make_audio

REPO = Path(__file__).resolve().parents[2]


def build(*argv) -> int:
    return run_command("build-dataset", [str(a) for a in argv])


def rows_by_key(out: Path) -> dict[str, dict]:
    return {r["keys"]: r for r in load_from_disk(str(out))}


@pytest.fixture
def songs(tmp_path) -> Path:
    """One song per convention (different formats and rates)."""
    d = tmp_path / "songs"
    (d / "sub").mkdir(parents=True)
    make_audio(d / "fork.wav", 2, 44100, 1.0)
    (d / "fork_prompt.txt").write_text("rock,  female vocals ,", encoding="utf-8")
    (d / "fork_lyrics.txt").write_text("[ti:Song]\n[00:01.00]Hello\n[00:02.50]<00:02.60>world\n\n[Chorus]\nla",
                                       encoding="utf-8")
    make_audio(d / "simple.flac", 1, 22050, 1.5)
    (d / "simple.txt").write_bytes("\ufeffsynthwave, retro".encode())  # UTF-8 with BOM
    (d / "simple.lyrics").write_bytes("Na na na\r\nOh".encode("utf-16"))  # UTF-16 with BOM
    make_audio(d / "sub" / "ace15.mp3", 2, 48000, 2.0)
    (d / "sub" / "ace15.caption.txt").write_text("ambient piano", encoding="utf-8")
    (d / "sub" / "ace15.txt").write_bytes("Quiet words".encode("utf-16-le"))  # lyrics, BOM-less UTF-16
    (d / "sub" / "ace15.json").write_text(json.dumps({"bpm": 90, "keyscale": "A minor", "timesignature": 4,
                                                       "language": "en"}), encoding="utf-8")
    make_audio(d / "sub" / "jsononly.m4a", 6, 96000, 1.0)
    (d / "sub" / "jsononly.json").write_text(json.dumps({"caption": "trap, 808"}), encoding="utf-8")
    make_audio(d / "csv.ogg", 1, 8000, 1.0)
    (d / "csv.lyrics.txt").write_text("Line one", encoding="utf-8")
    (d / "bpm.csv").write_text("File,BPM,Key\ncsv.ogg,128,F# minor\n", encoding="utf-8")
    make_audio(d / "bare.alac", 2, 44100, 1.0)
    return d


def test_every_convention(songs, tmp_path):
    out = tmp_path / "ds"
    assert build("--data_dir", songs, "--output_name", out) == 0
    rows = rows_by_key(out)
    assert set(rows) == {"fork", "simple", "ace15", "jsononly", "csv", "bare"}
    fork = rows["fork"]
    assert fork["tags"] == ["rock", "female vocals"]
    assert fork["norm_lyrics"] == "Hello\nworld\n\n[Chorus]\nla"
    assert fork["filename"] == str(songs / "fork.wav") and fork["speaker_emb_path"] == "" and fork["recaption"] == {}
    assert fork["duration"] == pytest.approx(1.0)
    assert rows["simple"]["tags"] == ["synthwave", "retro"] and rows["simple"]["norm_lyrics"] == "Na na na\nOh"
    assert rows["simple"]["duration"] == pytest.approx(1.5)
    ace = rows["ace15"]
    assert ace["tags"] == ["ambient piano"] and ace["norm_lyrics"] == "Quiet words"
    assert (ace["bpm"], ace["keyscale"], ace["timesignature"], ace["language"]) == (90.0, "A minor", "4", "en")
    assert ace["duration"] == pytest.approx(2.0)
    assert rows["jsononly"]["tags"] == ["trap", "808"] and rows["jsononly"]["norm_lyrics"] == "[instrumental]"
    assert (rows["csv"]["bpm"], rows["csv"]["keyscale"]) == (128.0, "F# minor")
    assert rows["csv"]["norm_lyrics"] == "Line one"
    assert rows["bare"]["tags"] == [] and rows["bare"]["norm_lyrics"] == "[instrumental]"
    assert rows["bare"]["bpm"] is None


def test_fork_flags_repeat_and_default_tag(songs, tmp_path, capsys):
    out = tmp_path / "ds"
    assert build("--data_dir", songs, "--output_name", out, "--repeat_count", 3, "--default_tag", "lofi, chill") == 0
    ds = load_from_disk(str(out))
    assert len(ds) == 18 and ds["keys"][:6] == ds["keys"][6:12]  # the whole list repeated, as the fork
    assert rows_by_key(out)["bare"]["tags"] == ["lofi", "chill"]
    err = capsys.readouterr().err
    for counter in ("songs", "total duration", "with caption", "with lyrics", "problems"):
        assert counter in err


def test_bad_input_is_reported_not_dropped(songs, tmp_path, capsys):
    (songs / "zero.wav").write_bytes(b"")
    (songs / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    path, _ = make_audio(songs / "truncated.wav", 2, 48000, 2.0)
    path.write_bytes(path.read_bytes()[:100_000])
    sf.write(songs / "silent.wav", np.zeros((48000, 2), np.float32), 48000)
    make_audio(songs / "fork.mp3", 2, 44100, 1.0)  # duplicate stem of fork.wav
    (songs / "simple_prompt.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))  # undecodable sidecar
    (songs / "lost_lyrics.txt").write_text("nobody's lyrics", encoding="utf-8")
    out = tmp_path / "ds"
    report_file = tmp_path / "report.json"
    assert build("--data_dir", songs, "--output_name", out, "--report", report_file) == 0
    err = capsys.readouterr().err
    problems = {Path(p["file"]).name: p for p in json.loads(report_file.read_text())["problems"]}
    assert problems["zero.wav"]["reason"].startswith("audio file is empty")
    assert problems["corrupt.flac"]["reason"].startswith("cannot read audio header")
    assert "truncated" in problems["truncated.wav"]["reason"]
    assert "silent" in problems["silent.wav"]["reason"]
    assert "duplicate stem" in problems["fork.mp3"]["reason"]
    assert "UTF-8" in problems["simple_prompt.txt"]["reason"]
    assert "without a matching audio" in problems["lost_lyrics.txt"]["reason"]
    assert all(p["fix"] for p in problems.values())
    for name in problems:
        assert name in err
    rows = rows_by_key(out)
    assert "truncated" in rows and "silent" not in rows and "zero" not in rows
    assert rows["simple"]["tags"] == ["synthwave", "retro"]  # the undecodable file was skipped, reported
    assert build("--data_dir", songs, "--output_name", out, "--strict") == 1


def test_conflicting_conventions_warn(tmp_path, capsys):
    d = tmp_path / "s"
    d.mkdir()
    make_audio(d / "a.wav", 2, 48000, 1.0)
    (d / "a_prompt.txt").write_text("rock", encoding="utf-8")
    (d / "a.txt").write_text("jazz", encoding="utf-8")
    assert build("--data_dir", d, "--output_name", tmp_path / "o") == 0
    assert rows_by_key(tmp_path / "o")["a"]["tags"] == ["rock"]
    assert "caption differs between a_prompt.txt (used) and a.txt (ignored)" in capsys.readouterr().err
    assert build("--data_dir", d, "--output_name", tmp_path / "o", "--strict") == 1


def test_json_list_and_existing_dataset_inputs(songs, tmp_path):
    rows = [{"keys": "k1", "filename": "fork.wav", "tags": ["a", "b"], "norm_lyrics": "",
             "speaker_emb_path": "", "recaption": {"simplified": "short caption"}},
            {"keys": "k2", "filename": str(songs / "simple.flac"), "tags": "x, y", "norm_lyrics": "[00:01]hi"},
            {"keys": "k3", "filename": "missing.wav", "tags": []}]
    src = songs / "rows.json"
    src.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "from_json"
    assert build("--data_dir", src, "--output_name", out) == 0
    got = rows_by_key(out)
    assert set(got) == {"k1", "k2"}
    assert got["k1"]["filename"] == str(songs / "fork.wav") and got["k1"]["norm_lyrics"] == "[instrumental]"
    assert got["k1"]["recaption"] == {"simplified": "short caption"} and got["k2"]["recaption"] == {"simplified": None}
    assert got["k2"]["tags"] == ["x", "y"] and got["k2"]["norm_lyrics"] == "hi"
    out2 = tmp_path / "again"  # an existing dataset folder as input round-trips
    assert build("--data_dir", out, "--output_name", out2) == 0
    assert rows_by_key(out2) == got


def test_usage_errors(tmp_path, capsys):
    assert build("--data_dir", tmp_path / "nope", "--output_name", tmp_path / "o") == 1
    assert "does not exist" in capsys.readouterr().err
    assert build("--data_dir", tmp_path, "--output_name", tmp_path / "o", "--repeat_count", 0) == 1
    assert build("--data_dir", tmp_path, "--output_name", tmp_path / "o") == 1  # no songs
    assert "no usable songs" in capsys.readouterr().err


def test_fork_script_shim(songs, tmp_path, monkeypatch, capsys):
    """The script run as `python convert2hf_dataset_new.py ...` runs it, in this process (runpy): a subprocess
    only re-imported torch and the libraries (~10 s of CPU) around the same three lines."""
    import runpy

    out = tmp_path / "ds"
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["convert2hf_dataset_new.py", "--data_dir", str(songs), "--output_name", str(out),
                                      "--no-check_audio"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path("convert2hf_dataset_new.py", run_name="__main__")
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    assert "wrote 6 rows" in captured.out and len(load_from_disk(str(out))) == 6
