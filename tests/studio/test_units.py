"""Studio pieces without a browser: sidecar edits per convention, undo, tags, forms vs the CLI, metrics, run logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from acetune.dataset.sidecar_reader import find_sidecars
from acetune.studio import edits, forms
from acetune.studio.files import Journal
from acetune.studio.runs import Run, RunManager, read_metrics
from acetune.studio.songs import row_from_sidecars


def song(folder: Path, stem: str, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / f"{stem}.wav"
    audio.write_bytes(b"RIFF")  # never decoded here
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return audio


def save(tmp_path: Path, audio: Path, new: dict) -> list[str]:
    row = row_from_sidecars(audio.name, audio, find_sidecars(audio, set(p.name for p in audio.parent.iterdir()), {}))
    return edits.save_song(Journal(tmp_path / "journal.jsonl"), audio.name, audio, row.sources,
                           {"caption": row.caption, "lyrics": row.lyrics}, new, edits.song_version(audio))


def reread(audio: Path):
    return find_sidecars(audio, set(p.name for p in audio.parent.iterdir()), {})


def test_fork_song_gets_fork_files_and_json_metadata(tmp_path):
    audio = song(tmp_path / "songs", "a", {"a_prompt.txt": "rock, guitar"})
    written = save(tmp_path, audio, {"caption": "rock, piano", "lyrics": "[verse]\nhello", "bpm": "120.0",
                                     "keyscale": "A minor", "language": ""})
    assert written == ["a.json", "a_lyrics.txt", "a_prompt.txt"]
    found = reread(audio)
    assert (found.caption, found.lyrics) == ("rock, piano", "[verse]\nhello")
    assert json.loads((audio.parent / "a.json").read_text()) == {"bpm": 120, "keyscale": "A minor"}


def test_acestep15_song_keeps_its_files_and_other_json_fields(tmp_path):
    audio = song(tmp_path / "songs", "b", {"b.caption.txt": "jazz", "b.json": json.dumps(
        {"lyrics": "old words", "bpm": 90, "keyscale": "C major", "timesignature": "4"})})
    save(tmp_path, audio, {"caption": "jazz, sax", "lyrics": "new words", "bpm": "95", "keyscale": "C major"})
    meta = json.loads((audio.parent / "b.json").read_text())
    assert meta == {"lyrics": "new words", "bpm": 95, "keyscale": "C major", "timesignature": "4"}
    assert (audio.parent / "b.caption.txt").read_text() == "jazz, sax"
    assert not (audio.parent / "b_prompt.txt").exists() and not (audio.parent / "b.lyrics.txt").exists()


def test_simpletuner_song_gets_simpletuner_lyrics(tmp_path):
    audio = song(tmp_path / "songs", "c", {"c.txt": "ambient"})
    assert save(tmp_path, audio, {"lyrics": "la la"}) == ["c.lyrics"]
    assert reread(audio).lyrics == "la la" and reread(audio).caption == "ambient"


def test_new_song_follows_the_folder_convention(tmp_path):
    folder = tmp_path / "songs"
    song(folder, "x", {"x.caption.txt": "a", "x.lyrics.txt": "b"})
    audio = song(folder, "y", {})
    assert save(tmp_path, audio, {"caption": "pop"}) == ["y.caption.txt"]


def test_conflict_bad_bpm_and_multi_level_undo(tmp_path):
    audio = song(tmp_path / "songs", "d", {"d_prompt.txt": "one"})
    journal = Journal(tmp_path / "journal.jsonl")
    version = edits.song_version(audio)
    (audio.parent / "d_prompt.txt").write_text("changed elsewhere")
    with pytest.raises(edits.EditConflict):
        edits.save_song(journal, "d", audio, {"caption": "d_prompt.txt"}, {"caption": "one"}, {"caption": "two"}, version)
    assert (audio.parent / "d_prompt.txt").read_text() == "changed elsewhere"
    with pytest.raises(edits.EditRefused):
        save(tmp_path, audio, {"bpm": "fast"})
    save(tmp_path, audio, {"caption": "two"})
    save(tmp_path, audio, {"caption": "three", "bpm": "100"})
    journal = Journal(tmp_path / "journal.jsonl")
    assert journal.undo("d.wav") and (audio.parent / "d_prompt.txt").read_text() == "two"
    assert not (audio.parent / "d.json").exists()
    assert journal.undo("d.wav") and (audio.parent / "d_prompt.txt").read_text() == "changed elsewhere"
    assert not journal.undo("d.wav") and not journal.can_undo("d.wav")


@pytest.mark.parametrize("op,tag,new,expected", [
    ("add", "Piano", "", "rock, piano"),  # already there (any case)
    ("add", "drums", "", "rock, piano, drums"),
    ("remove", "PIANO", "", "rock"),
    ("rename", "piano", "keys", "rock, keys"),
    ("rename", "piano", "rock", "rock"),  # merging into an existing tag leaves one
])
def test_retag(op, tag, new, expected):
    assert edits.retag("rock, piano", op, tag, new) == expected


@pytest.mark.parametrize("stage", forms.STAGES)
def test_forms_are_the_cli_flags(stage):
    """The form has exactly the parser's flags, and default values give an empty argv."""
    from acetune.cli import build_parser

    cls = forms.stage_args(stage)
    parser_flags = {a.dest for a in build_parser(cls, "x", None)._actions} - {"help", "config"}
    form = forms.form_fields(stage)
    assert {f["name"] for f in form} == parser_flags
    assert forms.to_argv(stage, {f["name"]: f["default"] for f in form if not f["required"]}) == []


def test_form_values_round_trip_through_the_parser(tmp_path):
    values = {"dataset_path": str(tmp_path / "prep"), "checkpoint_dir": "ckpt", "max_steps": "250",
              "learning_rate": "1e-4", "gradient_checkpointing": "off", "validation_prompt": "lofi, rain\npiano",
              "logger": "none", "warmup_steps": "10"}
    argv = forms.to_argv("train", values)
    assert "--warmup_steps" not in argv  # equal to its default
    args = forms.check_argv("train", argv)
    assert (args.max_steps, args.gradient_checkpointing, args.validation_prompt) == (250, "off", ["lofi, rain", "piano"])
    assert forms.command_line("train", argv).startswith("acetune train --dataset_path ")
    with pytest.raises(forms.FormError, match="max_steps"):
        forms.check_argv("train", forms.to_argv("train", {**values, "max_steps": "many"}))
    with pytest.raises(forms.FormError, match="unknown field"):
        forms.to_argv("train", {"max_stepz": 3})


def test_read_metrics_waits_for_whole_lines_and_resets_after_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 1.0, "train/loss": 0.5}\n{"step": 2, "time": 2.0, "train/lo')
    first = read_metrics(tmp_path)
    assert [p["step"] for p in first["points"]] == [1] and not first["reset"]
    path.write_text(path.read_text() + 'ss": 0.4}\n')
    second = read_metrics(tmp_path, first["offset"])
    assert [p["step"] for p in second["points"]] == [2]
    path.write_text('{"step": 1, "time": 1.0, "train/loss": 0.5}\n')  # a resume from step 1 dropped step 2
    third = read_metrics(tmp_path, second["offset"])
    assert third["reset"] and [p["step"] for p in third["points"]] == [1]


class FakeProc:
    def __init__(self, data: bytes, code: int):
        self.stdout, self.code = io.BufferedReader(io.BytesIO(data)), code

    def wait(self):
        return self.code


def test_run_log_keeps_text_and_final_bars_progress_keeps_the_latest(tmp_path):
    manager = RunManager(tmp_path)
    run = Run("001-train", "train", [], "acetune train")
    manager.runs[run.id] = run
    data = (b"starting\n\rtrain:  10%|#  | 1/10 [00:01<00:09, 1.0step/s]\rtrain:  50%|#####  | 5/10 [00:05<00:05, 1.0step/s]"
            b"\n\x1b[Asampling: 100%|##########| 60/60 [00:01<00:00]\n\rtrain: 100%|##########| 10/10 [00:10<00:00]\n"
            b"done: step 10, 1.0 s/step\n\rtrain:  30%|###  | 3/10 [00:03<00:07, 1.0step/s]Interrupted: kept\n")
    manager._pump(run, FakeProc(data, 130), open(manager.log_path(run.id), "ab"))
    assert manager.log_path(run.id).read_text().splitlines() == [
        "starting", "sampling: 100%|##########| 60/60 [00:01<00:00]", "train: 100%|##########| 10/10 [00:10<00:00]",
        "done: step 10, 1.0 s/step", "Interrupted: kept", "[exit code 130]"]  # no partial bars, no escapes
    assert run.progress == "train:  30%|###  | 3/10 [00:03<00:07, 1.0step/s] · sampling: 100%|##########| 60/60 [00:01<00:00]"
    assert (run.status, run.returncode) == ("stopped", 130)


def test_scan_attaches_report_problems_and_refresh_keeps_audio_ones(tmp_path, monkeypatch):
    import numpy as np

    from acetune.audio.io import audio_write
    from acetune.studio.songs import SongIndex

    songs = tmp_path / "songs"
    songs.mkdir()
    audio_write(songs / "a.wav", np.zeros((2, 4800), dtype=np.float32) + 0.1, 48000)
    (songs / "a_prompt.txt").write_bytes(b"rock \x80\x81 latin-1?")  # not UTF-8
    audio_write(songs / "b.wav", np.zeros((2, 48000), dtype=np.float32) + 0.1, 48000)
    data = (songs / "b.wav").read_bytes()
    (songs / "b.wav").write_bytes(data[: len(data) // 2])  # header promises more than the file holds
    index = SongIndex(songs, tmp_path / "work")
    monkeypatch.setattr(index, "start_analysis", lambda: None)
    index.scan()
    rows = {r["id"]: r for r in index.query()["rows"]}
    assert any("not UTF-8" in p for p in rows["a.wav"]["problems"]), rows["a.wav"]["problems"]
    assert any(p.startswith("truncated") for p in rows["b.wav"]["problems"])
    (songs / "b_prompt.txt").write_text("rock")
    refreshed = index.refresh("b.wav").to_json()
    assert refreshed["caption"] == "rock" and any(p.startswith("truncated") for p in refreshed["problems"])
    assert [r["id"] for r in index.query(filter="problems")["rows"]] == ["a.wav", "b.wav"]
    assert [r["id"] for r in index.query(q="truncated")["rows"]] == ["b.wav"]


def test_bulk_instrumental_and_rename_across_conventions(tmp_path):
    a = song(tmp_path / "songs", "a", {"a_prompt.txt": "rock, Piano", "a_lyrics.txt": "words"})
    b = song(tmp_path / "songs", "b", {"b.caption.txt": "jazz, piano"})
    rows = [row_from_sidecars(p.name, p, reread(p)) for p in (a, b)]
    journal = Journal(tmp_path / "journal.jsonl")
    assert edits.bulk_edit(journal, rows, tmp_path / "songs", "rename", "piano", "keys") == 2
    assert (reread(a).caption, reread(b).caption) == ("rock, keys", "jazz, keys")
    rows = [row_from_sidecars(p.name, p, reread(p)) for p in (a, b)]
    assert edits.bulk_edit(journal, rows, tmp_path / "songs", "instrumental") == 2
    assert (a.parent / "a_lyrics.txt").read_text() == "[instrumental]"  # the file it came from
    assert (b.parent / "b.lyrics.txt").read_text() == "[instrumental]"  # the song's 1.5 convention
    assert journal.undo("b.wav") and not (b.parent / "b.lyrics.txt").exists()
