"""One tiny ACE-Step 1.5 checkpoint + preprocessed song for the 1.5 stage tests (built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def v15_prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, preprocessed dataset folder) for one 2 s song with the 1.5 sidecars."""
    from tests.audio_fixtures import make_audio

    from acetune.cli import run_command
    from acetune.models.v15.schema import FAMILY_NAME
    from acetune.models.v15.tiny import save_tiny_checkpoint_v15

    base = tmp_path_factory.mktemp("v15stages")
    checkpoint = save_tiny_checkpoint_v15(base / "acestep-v15-tiny")
    songs = base / "songs"
    songs.mkdir()
    make_audio(songs / "neon.wav", seconds=2.0)
    (songs / "neon.caption.txt").write_text("dark synthwave, female vocals", encoding="utf-8")
    (songs / "neon.lyrics.txt").write_text("[verse]\nneon rain", encoding="utf-8")
    (songs / "neon.json").write_text(json.dumps({"bpm": 118, "keyscale": "A minor", "timesignature": "4",
                                                 "language": "en"}), encoding="utf-8")
    assert run_command("build-dataset", ["--data_dir", str(songs), "--output_name", str(base / "ds")]) == 0
    assert run_command("preprocess", ["--input_name", str(base / "ds"), "--output_name", str(base / "prep"),
                                      "--checkpoint_dir", str(checkpoint), "--model_family", FAMILY_NAME,
                                      "--device", "cpu", "--storage_dtype", "float32", "--num_workers", "0"]) == 0
    return checkpoint, base / "prep"


@pytest.fixture(scope="session")
def v15_xl_prepared(v15_prepared) -> tuple[Path, Path]:
    """(XL-shaped sft checkpoint, its preprocessed dataset) for the same song as `v15_prepared`."""
    from acetune.cli import run_command
    from acetune.models.v15.schema import FAMILY_NAME
    from acetune.models.v15.tiny import save_tiny_checkpoint_v15

    base = v15_prepared[1].parent
    checkpoint = save_tiny_checkpoint_v15(base / "acestep-v15-xl-sft-tiny", seed=1, xl=True, variant="sft")
    assert run_command("preprocess", ["--input_name", str(base / "ds"), "--output_name", str(base / "prep_xl"),
                                      "--checkpoint_dir", str(checkpoint), "--model_family", FAMILY_NAME,
                                      "--device", "cpu", "--storage_dtype", "float32", "--num_workers", "0"]) == 0
    return checkpoint, base / "prep_xl"
