"""build-dataset on bad sidecar values and misleading inputs: each reported in one line, never coerced."""

from __future__ import annotations

import json

from datasets import load_from_disk

from acetune.cli import run_command
from acetune.dataset.song import validate_metadata
from audio_fixtures import make_audio


def build(*argv) -> int:
    return run_command("build-dataset", [str(a) for a in argv])


def problem_lines(err: str) -> list[str]:
    return [s.strip() for s in err.splitlines() if s.strip().startswith("[error]")]


def test_wrong_types_in_a_15_song_json_are_reported_per_file_not_coerced(tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    make_audio(songs / "bad.wav", 2, 44100, 1.0)
    (songs / "bad.json").write_text(json.dumps({"bpm": "fast", "keyscale": 7, "caption": ["a", "b"]}))
    make_audio(songs / "good.wav", 2, 44100, 1.0)
    (songs / "good.json").write_text(json.dumps({"bpm": "96 bpm", "keyscale": "F# minor", "caption": "lofi, piano",
                                                 "timesignature": 4}))
    out = tmp_path / "out"
    assert build("--data_dir", songs, "--output_name", out) == 0
    lines = problem_lines(capsys.readouterr().err)
    assert lines == [f"[error] {songs / 'bad.json'}: bpm must be a number of beats per minute, not str \"fast\"; value ignored",
                     f"[error] {songs / 'bad.json'}: keyscale must be like \"A minor\" or \"F# major\", not int 7; value ignored"]
    rows = {r["keys"]: r for r in load_from_disk(str(out))}
    assert rows["bad"]["tags"] == ["a", "b"] and rows["bad"]["bpm"] is None and rows["bad"]["keyscale"] is None
    assert rows["good"]["tags"] == ["lofi", "piano"] and rows["good"]["bpm"] == 96.0
    assert rows["good"]["keyscale"] == "F# minor" and rows["good"]["timesignature"] == "4"
    assert build("--data_dir", songs, "--output_name", out, "--strict") == 1  # --strict: problems fail the run


def test_bad_values_in_json_rows_and_a_csv(tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    make_audio(songs / "a.wav", 2, 44100, 1.0)
    make_audio(songs / "b.wav", 2, 44100, 1.0)
    (songs / "keys.csv").write_text("File,BPM,Key\na.wav,900,A minor\nb.wav,120,Q minor\n")
    assert build("--data_dir", songs, "--output_name", tmp_path / "out") == 0
    lines = problem_lines(capsys.readouterr().err)
    assert any("bpm 900 is outside 30-300 (row a.wav); value ignored" in s for s in lines)
    assert any('keyscale must be like "A minor" or "F# major", not str "Q minor" (row b.wav)' in s for s in lines)
    rows = {r["keys"]: r for r in load_from_disk(str(tmp_path / "out"))}
    assert rows["a"]["bpm"] is None and rows["a"]["keyscale"] == "A minor" and rows["b"]["bpm"] == 120.0

    listing = tmp_path / "rows.json"
    listing.write_text(json.dumps([{"filename": "songs/a.wav", "tags": 5, "bpm": True},
                                   {"filename": "songs/b.wav", "tags": ["x", "y"], "keyscale": "Bb major"}]))
    assert build("--data_dir", listing, "--output_name", tmp_path / "rows") == 0
    lines = problem_lines(capsys.readouterr().err)
    assert [s.split(": ", 1)[1] for s in lines] == ["tags must be a string or a list of strings, not int 5; value ignored",
                                                    "bpm must be a number of beats per minute, not bool true; value ignored"]
    rows = {r["keys"]: r for r in load_from_disk(str(tmp_path / "rows"))}
    assert rows["a"]["tags"] == [] and rows["b"]["tags"] == ["x", "y"] and rows["b"]["keyscale"] == "Bb major"


def test_misleading_inputs_get_a_true_one_line_error(tmp_path, capsys):
    make_audio(tmp_path / "song.wav", 2, 44100, 1.0)
    assert build("--data_dir", tmp_path / "song.wav", "--output_name", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"Error: {tmp_path / 'song.wav'}: --data_dir is an audio file, not a folder of songs — pass the "
                   "folder that holds it (or a .json/.jsonl list of rows)"]
    listing = tmp_path / "rows.json"
    listing.write_text(json.dumps([{"filename": "song.wav"}, "song2.wav"]))
    assert build("--data_dir", listing, "--output_name", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'element 1 of the JSON list is a str ("song2.wav"), not an object' in err[0]
    assert not (tmp_path / "out").exists()


def test_validate_metadata_ranges_and_spellings():
    good, bad = validate_metadata({"bpm": 29.9, "keyscale": "Am", "timesignature": "6/8", "language": "en"})
    assert good == {"keyscale": "Am", "timesignature": "6/8", "language": "en"} and bad == ["bpm 29.9 is outside 30-300"]
    for key in ("C major", "c# minor", "Eb", "D dorian", "G mixolydian", "F♯ minor"):
        assert validate_metadata({"keyscale": key})[0] == {"keyscale": key}, key
    for key in ("H major", "C majr", "7", "A minor minor"):
        assert validate_metadata({"keyscale": key})[1], key
    assert validate_metadata({"timesignature": 17})[1] and validate_metadata({"timesignature": "4/5"})[1]
    assert validate_metadata({"caption": ["a", 1]})[1] == ['caption must be a string or a list of strings, not list ["a", 1]']
    assert validate_metadata({"bpm": None, "keyscale": ""}) == ({}, [])  # absent values are not problems
