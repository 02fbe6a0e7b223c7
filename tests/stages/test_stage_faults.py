"""Faults in the data stages: paths from any folder, zero rows, Ctrl-C, unreachable captioner.

Each test asserts the exit code, the one line the user sees and that nothing was lost or overwritten.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

import numpy as np
import soundfile as sf
from datasets import load_from_disk
from test_caption import INSTR, ChatServer, _song
from test_preprocess import build, make_songs, rows_by_key

from acetune.cli import run_command
from acetune.dataset import schema
from acetune.preprocessing import pipeline


def error_lines(err: str) -> list[str]:
    return [s for s in err.splitlines() if s.startswith("Error:")]


def advised(err: str, stage: str) -> list[str]:
    line = next(s for s in err.splitlines() if "continue with: " in s)
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[:2] == ["acetune", stage]
    return words[2:]


def test_filename_dataset_resolves_the_same_from_any_folder(tmp_path, tiny_ckpt, monkeypatch, capsys):
    make_songs(tmp_path / "project" / "songs")
    monkeypatch.chdir(tmp_path / "project")
    assert run_command("build-dataset", ["--data_dir", "songs", "--output_name", "data/filenames"]) == 0
    stored = load_from_disk("data/filenames")["filename"]
    assert all(os.path.isabs(f) and Path(f).is_file() for f in stored)  # absolute: no working-folder meaning
    # a hand-made dataset with paths relative to its own folder
    rel = load_from_disk("data/filenames").map(lambda r: {"filename": os.path.relpath(r["filename"], "data/rel")})
    rel.save_to_disk("data/rel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in ("filenames", "rel"):
        out = tmp_path / f"prep_{name}"
        assert run_command("preprocess", ["--input_name", str(tmp_path / "project" / "data" / name),
                                          "--output_name", str(out), "--checkpoint_dir", str(tiny_ckpt)]) == 0
        assert set(rows_by_key(out)) == {"alpha", "beta", "gamma"}, name


def test_preprocess_where_every_song_fails_exits_non_zero(tmp_path, tiny_ckpt, capsys):
    dataset = build(make_songs(tmp_path / "songs"), tmp_path / "filenames")
    for wav in (tmp_path / "songs").glob("*.*"):
        if wav.suffix in (".wav", ".flac"):
            wav.unlink()
    out = tmp_path / "prep"
    capsys.readouterr()
    assert run_command("preprocess", ["--input_name", str(dataset), "--output_name", str(out),
                                      "--checkpoint_dir", str(tiny_ckpt)]) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"Error: {dataset}: none of the 3 songs could be encoded, nothing was written — "
                                "fix the problems listed above and run again"]
    assert err.count("audio file not found") == 3
    assert not schema.part_dirs(out)


def test_preprocess_ctrl_c_closes_the_current_part_and_the_advice_finishes(tmp_path, tiny_ckpt, monkeypatch, capsys):
    dataset = build(make_songs(tmp_path / "songs"), tmp_path / "filenames")
    out = tmp_path / "prep"
    real = pipeline.encode_part
    calls = []

    def encode_then_signal(songs, *args, **kwargs):
        calls.append(len(songs))
        if len(calls) == 1:  # Ctrl-C while the first part (2 songs) is being encoded
            os.kill(os.getpid(), signal.SIGINT)
        return real(songs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_part", encode_then_signal)
    argv = ["--input_name", str(dataset), "--output_name", str(out), "--checkpoint_dir", str(tiny_ckpt),
            "--part_size", "2"]
    capsys.readouterr()
    assert run_command("preprocess", argv) == 130
    err = capsys.readouterr().err
    line = next(s for s in err.splitlines() if s.startswith("Stopped by Ctrl-C"))
    assert "2 rows written, the part in progress was finished" in line
    assert calls == [2] and len(rows_by_key(out)) == 2  # the part in progress was closed, no second part begun
    monkeypatch.undo()
    assert run_command("preprocess", advised(err, "preprocess")) == 0
    assert "1 to encode" in capsys.readouterr().err
    assert set(rows_by_key(out)) == {"alpha", "beta", "gamma"}


def test_caption_against_an_unreachable_server_is_not_a_success(tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs / "a.wav", 3.0)
    _song(songs / "b.wav", 3.0)
    closed = ChatServer([INSTR])
    closed.close()
    assert run_command("caption", ["--data_dir", str(songs), "--server_url", closed.url, "--no-analyze"]) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"Error: {songs}: none of the 2 songs got its files (see the problems above) — "
                                "fix the problems listed above (server address, model folder, audio files) and run again"]
    assert "songs processed" in err and "cannot reach the captioning server" in err
    assert not list(songs.glob("*_prompt.txt"))


def test_caption_silent_file_says_so_instead_of_none(tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    sf.write(songs / "quiet.wav", np.zeros(48000 * 2, dtype=np.float32), 48000)
    assert run_command("caption", ["--data_dir", str(songs), "--no-tags"]) == 0
    out = capsys.readouterr().out
    assert "quiet.wav: no steady beat, no clear key, silent" in out and "None" not in out


def test_caption_ctrl_c_finishes_the_song_then_stops(tmp_path, monkeypatch, capsys):
    from acetune.stages import caption

    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("a", "b", "c"):
        _song(songs / f"{name}.wav", 2.0)
    real = caption.caption_song

    def song_then_signal(plan, *args):
        if plan.audio.name == "a.wav":
            os.kill(os.getpid(), signal.SIGINT)
        return real(plan, *args)

    monkeypatch.setattr(caption, "caption_song", song_then_signal)
    server = ChatServer([INSTR])
    try:
        argv = ["--data_dir", str(songs), "--server_url", server.url]
        assert run_command("caption", argv) == 130
        err = capsys.readouterr().err
        assert "Stopped by Ctrl-C after 1 of 3 songs" in err
        assert sorted(p.name for p in songs.glob("*_prompt.txt")) == ["a_prompt.txt"]  # a finished, b/c untouched
        monkeypatch.undo()
        assert run_command("caption", advised(err, "caption")) == 0
    finally:
        server.close()
    assert sorted(p.name for p in songs.glob("*_prompt.txt")) == ["a_prompt.txt", "b_prompt.txt", "c_prompt.txt"]
