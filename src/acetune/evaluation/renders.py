"""The audio `acetune evaluate` scores: validation renders made during training, or fresh renders.

A render set is one LoRA (or none) at one strength rendered for every prompt, prompt i with seed + i,
exactly as the training's validation renders (`training/validation.py`), so sets differ only by the LoRA.
Fresh renders go through the `generate` stage (each family's own sampler); they are cached by file name
in the report folder, so a rerun of `acetune evaluate` renders only what is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from acetune.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class RenderSpec:
    """What every render set renders. `lyrics` has one entry per prompt."""

    checkpoint_dir: str
    prompts: list[str]
    lyrics: list[str]
    duration: float
    seed: int
    steps: int = 60
    device: str = "auto"

    def records(self) -> list[tuple[str, str, int]]:
        return [(p, ly, self.seed + i) for i, (p, ly) in enumerate(zip(self.prompts, self.lyrics))]


def validation_renders(folder: Path, spec: RenderSpec) -> list[Path] | None:
    """The wavs of a training validation folder (`validation/step-N/`) when it rendered exactly `spec`'s
    prompts, lyrics, seeds and duration; None otherwise."""
    meta = folder / "prompts.json"
    if not meta.is_file():
        return None
    try:
        renders = json.loads(meta.read_text(encoding="utf-8"))["renders"]
        found = [(r["prompt"], r["lyrics"], int(r["seed"])) for r in renders]
        same = found == spec.records() and all(abs(float(r["duration"]) - spec.duration) < 1e-6 for r in renders)
    except (ValueError, KeyError, TypeError):
        return None
    paths = [folder / r["file"] for r in renders]
    return paths if same and all(p.is_file() for p in paths) else None


def render_set(spec: RenderSpec, lora: Path | None, strength: float, out_dir: Path) -> list[Path]:
    """Render every prompt with `lora` at `strength` (None: the base model) into `out_dir/<i>.wav`."""
    from acetune.stages import generate

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (prompt, lyrics, seed) in enumerate(spec.records()):
        path = out_dir / f"{i}.wav"
        if not path.is_file():
            args = generate.Args(checkpoint_dir=spec.checkpoint_dir, prompt=prompt, lyrics=lyrics,
                                 duration=spec.duration, seed=seed, steps=spec.steps, device=spec.device,
                                 output=str(path.with_name(path.stem + ".partial.wav")),
                                 lora=[f"{lora}:{strength}"] if lora is not None else [])
            with contextlib.redirect_stdout(io.StringIO()):  # generate's own summary lines
                generate.run(args)
            path.with_name(path.stem + ".partial.wav").replace(path)  # complete files only: a rerun resumes
        paths.append(path)
    return paths


def training_song_paths(dataset_path: str | Path | None, reference_audio: str | Path | None) -> list[Path]:
    """The songs style match compares against: every audio file in `reference_audio`, else the source
    files of the preprocessed dataset (one per song, windows merged)."""
    from acetune.audio.io import decode  # noqa: F401  (fails early if the audio backends are missing)

    if reference_audio:
        folder = Path(reference_audio)
        if not folder.is_dir():
            raise InputError("reference audio folder not found", path=folder, fix="pass the folder of training songs")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac", ".mp3", ".ogg", ".m4a"))
        if not files:
            raise InputError("no audio files (.wav .flac .mp3 .ogg .m4a) in the reference folder", path=folder)
        return files
    if not dataset_path:
        raise InputError("no training songs to compare with", fix="pass --reference_audio FOLDER (the training songs)")
    from acetune.dataset import schema

    rows, _ = schema.load_dataset(str(dataset_path))
    paths = [Path(p) for p in dict.fromkeys(rows[schema.SOURCE_PATH])]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"training song not found ({len(missing)} of {len(paths)} missing)", path=missing[0],
                         fix="pass --reference_audio FOLDER with the training songs")
    return paths
