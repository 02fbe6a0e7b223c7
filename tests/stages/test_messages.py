"""Messages that used to mislead: each now says what is really wrong and what to do, in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from acetune.cli import run_command
from acetune.dataset import schema

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_fixtures import make_dataset, train_argv  # noqa: E402


def one_error(capsys) -> str:
    err = [s for s in capsys.readouterr().err.splitlines() if s.startswith("Error:")]
    assert len(err) == 1, err
    return err[0]


def test_lora_strength_that_is_not_a_number(tiny_ckpt, tmp_path, capsys):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    assert run_command("generate", ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "p", "--lora", f"{lora}:abc"]) == 1
    assert one_error(capsys) == (f"Error: --lora {lora}:abc: the strength 'abc' is not a number — write it as "
                                 f"{lora}:0.8 (or leave out :STRENGTH for 1.0)")


def test_a_15_lora_given_to_v1_generate(tiny_ckpt, tmp_path, capsys):
    lora = tmp_path / "v15.safetensors"
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 4)}, str(lora))
    out = tmp_path / "song.wav"
    assert run_command("generate", ["--checkpoint_dir", str(tiny_ckpt), "--prompt", "p", "--lora", str(lora),
                                    "--output", str(out)]) == 1
    line = one_error(capsys)
    assert "is an ACE-Step 1.5 adapter" in line and "use it with an ACE-Step 1.5 checkpoint" in line
    assert "only plain LoRA" not in line and not out.exists()


def test_v1_stages_pointed_at_a_15_checkpoint_and_train_model_family(train_tiny, tmp_path, capsys):
    from acetune.models.v15.tiny import save_tiny_checkpoint_v15

    v15 = save_tiny_checkpoint_v15(tmp_path / "v15")
    filenames = tmp_path / "filenames"
    filenames.mkdir()
    assert run_command("preprocess", ["--input_name", str(filenames), "--output_name", str(tmp_path / "prep"),
                                      "--checkpoint_dir", str(v15)]) == 1
    assert one_error(capsys) == (f"Error: {v15}: this is an acestep15 checkpoint, not ace-step-v1 — add "
                                 "--model_family acestep15 (or pass an ace-step-v1 checkpoint folder)")
    checkpoint, data = train_tiny
    out = tmp_path / "run"
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "1", "--model_family", "acestep15")) == 1
    assert one_error(capsys) == (f"Error: {checkpoint}: this is an ace-step-v1 checkpoint, not acestep15 — add "
                                 "--model_family ace-step-v1 (or pass an acestep15 checkpoint folder)")
    assert not out.exists()
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "1", "--model_family", "ace-step-v1")) == 0


def test_refused_merge_locks_nothing_and_names_both_sides(train_tiny, tmp_path, capsys):
    checkpoint, _ = train_tiny
    a = make_dataset(tmp_path / "a", checkpoint, songs=1, variants=2)
    b = make_dataset(tmp_path / "b", checkpoint, songs=1, variants=3, seed=1)
    merged = tmp_path / "merged"
    assert run_command("preprocess", ["--merge", str(a), str(b), "--output_name", str(merged)]) == 1
    assert one_error(capsys) == (f"Error: {b}: made with other settings (prompt_variants: 3 in {b}, 2 in {a}) — "
                                 "merge only outputs made with the same checkpoint and settings")
    assert not merged.exists()  # nothing locked to either side
    assert run_command("preprocess", ["--merge", str(b), "--output_name", str(merged)]) == 0  # the retry works
    assert json.loads((merged / schema.META_FILE).read_text())["prompt_variants"] == 3
