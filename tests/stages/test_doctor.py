"""`acetune doctor` on a tiny checkpoint folder: good, a missing file, a wrong shape, a truncated file,
a missing folder; and the expected keys/shapes it builds for the official configs equal the golden
manifest of the released 3.5B checkpoint (874 + 192 + 713 keys)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from acetune.cli import run_command
from acetune.layout import V1_DCAE_DIR, V1_TEXT_ENCODER_DIR, V1_TRANSFORMER_DIR, V1_VOCODER_DIR, WEIGHTS_FILE
from acetune.stages import doctor


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from acetune.models.v1.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("doctor") / "ckpt", transformer_overrides={"num_layers": 2})


@pytest.fixture()
def ckpt(tiny_root, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "ckpt"))


def _doctor(path: Path, capsys) -> tuple[int, str]:
    code = run_command("doctor", ["--checkpoint_dir", str(path)])
    return code, capsys.readouterr().out


def _problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("PROBLEM ")]


def test_good_folder(ckpt, capsys):
    code, out = _doctor(ckpt, capsys)
    assert code == 0 and _problems(out) == [], out
    for name in (V1_TRANSFORMER_DIR, V1_DCAE_DIR, V1_VOCODER_DIR, V1_TEXT_ENCODER_DIR):
        assert f"  {name}/" in out
    assert "stored as F32" in out and "not the official 3.5B config" in out and "free disk" in out


def test_missing_file(ckpt, capsys):
    (ckpt / V1_VOCODER_DIR / WEIGHTS_FILE).unlink()
    code, out = _doctor(ckpt, capsys)
    problems = _problems(out)
    assert code == 1 and len(problems) == 1, out
    assert V1_VOCODER_DIR in problems[0] and f"missing {WEIGHTS_FILE}" in problems[0] and " — " in problems[0]


def test_wrong_shape(ckpt, capsys):
    path = ckpt / V1_TRANSFORMER_DIR / WEIGHTS_FILE
    tensors = load_file(str(path))
    key = "transformer_blocks.0.attn.to_q.weight"
    want = list(tensors[key].shape)
    tensors[key] = torch.zeros(want[0] + 1, want[1])
    save_file(tensors, str(path))
    code, out = _doctor(ckpt, capsys)
    problems = _problems(out)
    assert code == 1 and len(problems) == 1, out
    assert f"{key} has shape {[want[0] + 1, want[1]]}, the config needs {want}" in problems[0]


def test_truncated_and_missing_folder(ckpt, capsys):
    path = ckpt / V1_DCAE_DIR / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    shutil.rmtree(ckpt / V1_TEXT_ENCODER_DIR)
    code, out = _doctor(ckpt, capsys)
    problems = _problems(out)
    assert code == 1 and len(problems) == 2, out
    assert any("truncated" in p and V1_DCAE_DIR in p for p in problems)
    assert any(V1_TEXT_ENCODER_DIR in p and "folder missing" in p for p in problems)


def test_bad_config(ckpt, capsys):
    (ckpt / V1_DCAE_DIR / "config.json").write_text("{not json")
    code, out = _doctor(ckpt, capsys)
    assert code == 1 and any("does not parse" in p for p in _problems(out)), out


def test_official_expectations_match_the_manifest(golden):
    from diffusers import AutoencoderDC

    from acetune.models.v1.dcae import official_dcae_config
    from acetune.models.v1.transformer import build_transformer, default_config
    from acetune.models.v1.vocoder import ADaMoSHiFiGANV1

    manifest = json.loads((golden / "v1_full_manifest.json").read_text())["models"]
    built = {
        V1_TRANSFORMER_DIR: doctor._meta_shapes(lambda: build_transformer(default_config(), "meta")),
        V1_DCAE_DIR: doctor._meta_shapes(lambda: AutoencoderDC.from_config(official_dcae_config())),
        V1_VOCODER_DIR: doctor._meta_shapes(lambda: ADaMoSHiFiGANV1.from_config({})),
    }
    for name, shapes in built.items():
        want = {k: tuple(v["shape"]) for k, v in manifest[name]["keys"].items()}
        assert shapes == want, name
    assert [len(s) for s in built.values()] == [874, 192, 713]
