"""`acetune train` end to end on a tiny generated checkpoint + dataset (CPU, seconds).

Covers: the checkpoint folders and their keys, the fork's script shim, refusing a dataset made for
another transformer, the overfit check, stopping on a non-finite loss, bitwise resume after a real
SIGKILL, and two processes with DDP over gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from acetune.cli import run_command
from acetune.dataset.schema import DatasetMeta
from acetune.lora.keys import LORA_WEIGHTS_FILE
from acetune.training import checkpoint as ckpt
from acetune.training.loggers import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_fixtures import TINY_OVERRIDES, make_checkpoint, make_dataset, train_argv  # noqa: E402

SCRIPT = Path(__file__).with_name("_train_run.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 240


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    checkpoint = make_checkpoint(base / "ckpt")
    return checkpoint, make_dataset(base / "data", checkpoint, ssl=True)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ACETUNE_NO_PROGRESS="1")


def _spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or _env())


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, (out + err)[-4000:]
    return out


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / LORA_WEIGHTS_FILE))


def test_train_writes_checkpoints(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    out = tmp_path / "out"
    code = run_command("train", train_argv(data, checkpoint, out, "--max_steps", "5", "--every_n_train_steps", "2",
                                           "--save_last", "2", "--batch_size", "2", "--accumulate_grad_batches", "2"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "***** acetune train *****" in printed and "done: step 5" in printed
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4, 5]  # every 2 + the end, keep 2
    folder = out / "step-000005"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ckpt.CHECKPOINT_FILES)
    with safe_open(str(folder / LORA_WEIGHTS_FILE), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = list(f.keys())
    assert len(keys) == 2 * 2 * 4 * 2 and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert all(not k.startswith(("base_model", "diffusion_model")) for k in keys)
    config = json.loads((folder / ckpt.TRAIN_CONFIG_FILE).read_text())
    assert config["max_steps"] == 5 and config["family"] == "ace-step-v1"
    records = read_metrics(out)  # written with --logger none too
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(isinstance(r["train/loss"], float) and r["train/lr"] >= 0 for r in records) and records[1]["train/lr"] > 0


def test_refuses_dataset_for_another_checkpoint(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    other = tmp_path / "data"
    make_dataset(other, checkpoint, songs=1)
    meta = DatasetMeta.load(other)
    meta.checkpoint_hash = "0123456789abcdef"
    meta.save(other)
    capsys.readouterr()
    assert run_command("train", train_argv(other, checkpoint, tmp_path / "out", "--max_steps", "1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preprocessed for transformer config 0123456789abcdef" in err[0]


def test_v1_refuses_the_15_recipe_flags(tiny, tmp_path, capsys):
    checkpoint, data = tiny
    for flag, value in (("--cfg_dropout", "0.1"), ("--timestep_sampling", "logit_normal")):
        capsys.readouterr()
        assert run_command("train", train_argv(data, checkpoint, tmp_path / "out", "--max_steps", "1", flag, value)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "are ACE-Step 1.5 settings" in err[0]


def test_overfit_check_passes_on_one_song(tmp_path, capsys):
    """One generated song, tiny model (width 128 so the output layer is not a bottleneck): 10x in <= 300 steps."""
    from acetune.models.v1.tiny import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", seed=3,
                                      transformer_overrides={**TINY_OVERRIDES, "attention_head_dim": 64})
    data = make_dataset(tmp_path / "data", checkpoint, songs=1, frames=(16,))
    lora = tmp_path / "lora.json"
    lora.write_text(json.dumps({"r": 16, "lora_alpha": 16,
                                "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "final_layer.linear"]}))
    argv = train_argv(data, checkpoint, tmp_path / "out", "--overfit_check", "--lora_config_path", str(lora))
    code = run_command("train", argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    line = next(s for s in printed.splitlines() if s.startswith("overfit check"))
    assert "PASSED" in line
    assert not (tmp_path / "out").exists()  # the check trains nothing it keeps


def test_non_finite_loss_stops_and_keeps_last_good(tiny, tmp_path, monkeypatch, capsys):
    from acetune.models.v1.family import V1Family

    real = V1Family.training_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(V1Family, "training_loss", poisoned)
    checkpoint, data = tiny
    out = tmp_path / "out"
    code = run_command("train", train_argv(data, checkpoint, out, "--max_steps", "10", "--every_n_train_steps", "2"))
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became nan at step 4" in err and "step-000002" in err
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2]


def test_resume_after_sigkill_is_bitwise(tiny, tmp_path):
    """7 steps uninterrupted == killed right after step 4's checkpoint + `--resume` (dropout, variants,
    accumulation across epoch ends, SSL losses all on)."""
    checkpoint, data = tiny
    flags = ["--max_steps", "7", "--every_n_train_steps", "2", "--batch_size", "2", "--accumulate_grad_batches", "2"]
    ref = _spawn("--", *train_argv(data, checkpoint, tmp_path / "ref", *flags))
    killed = _spawn("--hang_after_save", "4", "--", *train_argv(data, checkpoint, tmp_path / "run", *flags))
    try:
        for line in killed.stdout:
            if line.strip() == "SAVED 4":
                killed.kill()
                break
        killed.wait(TIMEOUT)
        assert killed.returncode != 0, killed.stderr.read()[-3000:]
        assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2, 4]
        _finish(ref)
    finally:
        for proc in (ref, killed):
            if proc.poll() is None:
                proc.kill()
    out = _finish(_spawn("--", *train_argv(data, checkpoint, tmp_path / "run", *flags, "--resume")))
    assert "resumed from" in out and "step-000004" in out
    a, b = _lora(tmp_path / "ref" / "step-000007"), _lora(tmp_path / "run" / "step-000007")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed LoRA differs from the uninterrupted run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_ddp_gloo(tiny, tmp_path):
    """Two DDP ranks over gloo (forked after the imports, which are ~90% of a tiny run)."""
    checkpoint, data = tiny
    argv = train_argv(data, checkpoint, tmp_path / "out", "--max_steps", "2", "--every_n_train_steps", "2")
    logs = tmp_path / "logs"
    proc = _spawn("--fork_ranks", "2", str(logs), "--", *argv,
                  env=dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())))
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    outs = [(logs / f"rank{r}.out").read_text() for r in range(2)]
    errs = [(logs / f"rank{r}.err").read_text() for r in range(2)]
    assert proc.returncode == 0, (out + err + "".join(outs + errs))[-4000:]
    assert "processes 2, replicas in sync: yes" in outs[0]
    assert outs[1].strip() == ""  # only rank 0 prints
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "out")] == [2]


def test_trainer_new_shim_help(monkeypatch, capsys):
    """`python trainer_new.py --help`, run in this process (runpy): a subprocess only re-imported torch."""
    import runpy

    monkeypatch.setattr(sys, "argv", [str(REPO / "trainer_new.py"), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "trainer_new.py"), run_name="__main__")
    proc = capsys.readouterr()
    assert done.value.code in (0, None)
    assert "trainer_new.py" in proc.out  # the fork's script name as the program name
    for flag in ("--dataset_path", "--checkpoint_dir", "--lora_config_path", "--every_n_train_steps", "--save_last",
                 "--accumulate_grad_batches", "--gradient_clip_val", "--precision", "--resume", "--overfit_check"):
        assert flag in proc.out


def test_validation_render_at_step_0_and_tensorboard(tiny, tmp_path):
    checkpoint, data = tiny
    out = tmp_path / "out"
    # 0.5 s renders (the studio test's length): which steps render is checked here, not the render itself
    argv = train_argv(data, checkpoint, out, "--max_steps", "2", "--validation_prompt", "pop song",
                      "--validation_duration", "0.5", "--validation_every", "2", "--logger", "tensorboard")
    assert run_command("train", argv) == 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000000", "step-000002"]
    assert (out / "validation" / "step-000000" / "0.wav").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "logs").iterdir())


def test_lyrics_embedder_is_checkpointed_and_resumed(tiny, tmp_path):
    checkpoint, data = tiny
    out = tmp_path / "out"
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "1", "--train_lyrics_embedder")) == 0
    assert run_command("train", train_argv(data, checkpoint, out, "--max_steps", "2", "--train_lyrics_embedder",
                                           "--resume")) == 0
    state = load_file(str(out / "step-000002" / ckpt.STATE_TENSORS_FILE))
    assert any(k.startswith("extra/lyrics_embedder/lyric_encoder.") for k in state)


@pytest.mark.slow  # optimum-quanto's import and kernel setup take ~10 s
def test_int8_base_weights(tiny, tmp_path):
    checkpoint, data = tiny
    argv = train_argv(data, checkpoint, tmp_path / "out", "--max_steps", "2", "--int8", "--precision", "bf16-mixed")
    assert run_command("train", argv) == 0
    assert ckpt.find_latest_checkpoint(tmp_path / "out").name == "step-000002"


def test_pointwise_convs_as_linear_keep_the_output():
    """`--int8` first turns GLUMBConv's kernel-1 convs into linears (quanto has no Conv1d): same output."""
    from acetune.models.v1.transformer import ACEStepTransformer2DModel, tiny_transformer_config
    from acetune.training.quantize import as_linear_pointwise_convs

    torch.manual_seed(0)
    model = ACEStepTransformer2DModel(**tiny_transformer_config()).eval()
    ff = model.transformer_blocks[0].ff
    x = torch.randn(2, 7, model.inner_dim)
    with torch.no_grad():
        before = ff(x)
        assert as_linear_pointwise_convs(model) == 2 * 2  # inverted + point conv per block
        after = ff(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
