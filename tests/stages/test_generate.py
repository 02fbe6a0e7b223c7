"""`acetune generate` end to end on a tiny checkpoint in the official layout (CPU, a few seconds).

Length rule asserted: the file holds ceil(int(duration·44100/4096)·4096·48000/44100) samples, i.e.
the reference's latent frames at 48 kHz: at most one latent frame (4096/44100 s = 92.9 ms) shorter
than --duration, never longer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from acetune.cli import run_command
from acetune.layout import V1_TEXT_ENCODER_DIR
from acetune.lora import keys as lk
from acetune.lora.file import read_lora
from acetune.lora.fuse import fuse_loras
from acetune.models.v1.family import FAMILY
from acetune.models.v1.pipeline import SAMPLE_RATE, output_samples
from acetune.models.v1.tiny import save_tiny_checkpoint
from acetune.stages.generate import parse_lora

LATENT_FRAME_S = 4096 / 44100
# 3 sampler steps, 2.5 s by default. The seed and LoRA-strength checks compare songs with each other, whatever their length: 1 s (11 latent
# frames) instead of 2.5 s, as the cost of a render grows with its length (the 2.5 s length rule is above).
SHORT = 1.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0,
                                lyric_vocab=golden / "lyrics" / "vocab.json")


def _lora(folder: Path, ckpt: Path, *, r: int = 4, alpha: float = 2.0, rslora: bool = True, seed: int = 0,
          extra: dict | None = None) -> Path:
    """A random rank-r LoRA on every to_q/to_v of the tiny transformer, with adapter_config.json beside it."""
    model = FAMILY.load_transformer(ckpt)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.endswith(("attn.to_q", "attn.to_v")):
            out_f, in_f = module.weight.shape
            tensors[lk.saved_key(name, lk.LORA_A)] = torch.randn(r, in_f, generator=g) * 0.3
            tensors[lk.saved_key(name, lk.LORA_B)] = torch.randn(out_f, r, generator=g) * 0.3
    tensors.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / lk.LORA_WEIGHTS_FILE, metadata=lk.SAVED_METADATA)
    config = {"r": r, "lora_alpha": alpha, "use_rslora": rslora, "target_modules": ["to_q", "to_v"]}
    (folder / lk.ADAPTER_CONFIG_FILE).write_text(json.dumps(config))
    return folder / lk.LORA_WEIGHTS_FILE


def _generate(ckpt: Path, out: Path, *extra: str, capsys=None, duration: float = 2.5) -> tuple[int, str, str]:
    code = run_command("generate", ["--checkpoint_dir", str(ckpt), "--prompt", "pop, rock, upbeat", "--seed", "7",
                                    "--output", str(out), "--steps", "3", "--duration", str(duration), *extra])
    captured = capsys.readouterr() if capsys is not None else None
    return code, (captured.out if captured else ""), (captured.err if captured else "")


def _read(path: Path):
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data, sr


def _differs(a, b) -> bool:
    """More than a third of the 16-bit samples differ (the random tiny codec is nearly input-blind, so
    the files differ by little; the latents below show the real size of the change)."""
    return (a != b).mean() > 1 / 3


def _latents(ckpt: Path, seed: int, loras=(), duration: float = 2.5) -> torch.Tensor:
    from acetune.models.v1.pipeline import V1Generator
    from acetune.models.v1.sampler import SamplerSettings

    gen = V1Generator.from_pretrained(ckpt, device="cpu")
    gen.apply_loras(loras)
    return gen.sample("pop, rock, upbeat", "", duration, seed, SamplerSettings(infer_steps=3))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_writes_48k_stereo_of_the_requested_duration(ckpt, tmp_path, capsys):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nhello world, this is a test\n\n[chorus]\nla la la\n", encoding="utf-8")
    out = tmp_path / "song.wav"
    code, stdout, _ = _generate(ckpt, out, "--lyrics", str(lyrics), capsys=capsys)
    assert code == 0
    data, sr = _read(out)
    assert sr == SAMPLE_RATE and data.shape[1] == 2
    assert data.shape[0] == output_samples(2.5) == 115_915  # 26 latent frames: ceil(26·4096·48000/44100)
    assert 0 <= 2.5 - data.shape[0] / sr < LATENT_FRAME_S
    assert torch.from_numpy(data).abs().max() > 0
    lines = stdout.strip().splitlines()
    assert lines[0] == str(out) and "48 kHz stereo, seed 7, 3 steps" in lines[1]


@pytest.mark.parametrize("args,name", [(["--format", "flac"], "song"), ([], "song.flac")])
def test_flac_by_flag_or_extension(ckpt, tmp_path, args, name):
    code, _, _ = _generate(ckpt, tmp_path / name, *args)
    assert code == 0
    info = sf.info(str(tmp_path / "song.flac"))
    assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", 48000, 2, output_samples(2.5))


def test_same_seed_same_song_other_seed_other_song(ckpt, tmp_path):
    for name, seed in (("a.wav", "7"), ("b.wav", "7"), ("c.wav", "8")):
        assert _generate(ckpt, tmp_path / name, "--seed", seed, duration=SHORT)[0] == 0
    a, b, c = (_read(tmp_path / n)[0] for n in ("a.wav", "b.wav", "c.wav"))
    assert (a == b).all()
    assert _differs(a, c)
    seven = _latents(ckpt, 7, duration=SHORT)
    assert _rel(_latents(ckpt, 7, duration=SHORT), seven) == 0.0
    assert _rel(_latents(ckpt, 8, duration=SHORT), seven) > 0.5


def test_lora_strength_zero_is_no_lora_and_strength_changes_output(ckpt, tmp_path):
    lora = _lora(tmp_path / "lora", ckpt)
    runs = {"none": [], "zero": ["--lora", f"{lora}:0"], "half": ["--lora", f"{lora}:0.5"],
            "folder": ["--lora", str(lora.parent)]}
    for name, args in runs.items():
        assert _generate(ckpt, tmp_path / f"{name}.wav", *args, duration=SHORT)[0] == 0
    wav = {name: _read(tmp_path / f"{name}.wav")[0] for name in runs}
    assert (wav["zero"] == wav["none"]).all()
    assert _differs(wav["half"], wav["none"])
    assert _differs(wav["folder"], wav["half"])  # strength 1.0 differs from 0.5
    base, half = _latents(ckpt, 7, duration=SHORT), _latents(ckpt, 7, [(lora, 0.5)], duration=SHORT)
    assert _rel(_latents(ckpt, 7, [(lora, 0.0)], duration=SHORT), base) == 0.0
    assert _rel(half, base) > 0.01


def test_fused_lora_equals_the_peft_model(ckpt, tmp_path):
    """The scale rule: fusing the saved file at strength s == peft's adapter scaled by s (rsLoRA, alpha 2, r 4)."""
    from acetune.training.lora import add_lora

    lora = _lora(tmp_path / "lora", ckpt)
    peft_model = FAMILY.load_transformer(ckpt)
    add_lora(peft_model, {"r": 4, "lora_alpha": 2.0, "use_rslora": True, "target_modules": ["to_q", "to_v"]})
    params = dict(peft_model.named_parameters())
    for key, value in read_lora(lora).modules.items():
        params[f"{key}.lora_A.lora_adapter.weight"].data.copy_(value.a)
        params[f"{key}.lora_B.lora_adapter.weight"].data.copy_(value.b)
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    set_weights_and_activate_adapters(peft_model, ["lora_adapter"], [0.7])
    fused = FAMILY.load_transformer(ckpt)
    handle = fuse_loras(fused, [(read_lora(lora), 0.7)])
    assert read_lora(lora).scale_source == lk.ADAPTER_CONFIG_FILE
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 8, 16, 12, generator=g), torch.tensor([500.0])
    ctx, ctx_mask = torch.randn(1, 5, 32, generator=g), torch.ones(1, 5)
    mask = torch.ones(1, 12)
    with torch.no_grad():
        want = peft_model.decode(x, mask, ctx, ctx_mask, t)[0]
        got = fused.decode(x, mask, ctx, ctx_mask, t)[0]
        rel = ((got - want).norm() / want.norm()).item()
        assert rel < 1e-5, rel
        handle.restore()
        plain = FAMILY.load_transformer(ckpt)
        assert all(torch.equal(p, q) for p, q in zip(fused.state_dict().values(), plain.state_dict().values()))


def test_scale_rule_alpha_tensor_then_config_then_one(ckpt, tmp_path):
    path = _lora(tmp_path / "cfg", ckpt, r=4, alpha=8.0, rslora=False)
    assert {m.scale for m in read_lora(path).modules.values()} == {2.0}  # alpha / r
    path = _lora(tmp_path / "rs", ckpt, r=4, alpha=8.0, rslora=True)
    assert {m.scale for m in read_lora(path).modules.values()} == {4.0}  # alpha / sqrt(r)
    (tmp_path / "rs" / lk.ADAPTER_CONFIG_FILE).unlink()
    assert {m.scale for m in read_lora(path).modules.values()} == {1.0}  # baked: no config, no alpha
    alpha = {lk.saved_key("transformer_blocks.0.attn.to_q", lk.ALPHA): torch.tensor(2.0)}
    path = _lora(tmp_path / "alpha", ckpt, alpha=8.0, rslora=False, extra=alpha)
    lora = read_lora(path)
    assert lora.modules["transformer_blocks.0.attn.to_q"].scale == 0.5  # .alpha / r wins (ComfyUI's rule)
    assert lora.modules["transformer_blocks.0.attn.to_v"].scale == 2.0


def test_clear_errors(ckpt, tmp_path, capsys):
    bad = _lora(tmp_path / "bad", ckpt, extra={
        "transformer_blocks.99.attn.to_q.lora_A.weight": torch.zeros(4, 32),
        "transformer_blocks.99.attn.to_q.lora_B.weight": torch.zeros(32, 4)})
    code, _, err = _generate(ckpt, tmp_path / "x.wav", "--lora", f"{bad}:0.5", capsys=capsys)
    assert code == 1 and str(bad) in err and "1 of 81 LoRA modules match no module" in err

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / V1_TEXT_ENCODER_DIR / "tokenizer.json").unlink()
    code, _, err = _generate(broken, tmp_path / "x.wav", capsys=capsys)
    assert code == 1 and "missing tokenizer.json" in err and len(err.strip().splitlines()) == 1

    code, _, err = _generate(ckpt, tmp_path / "x.wav", "--duration", "0.05", capsys=capsys)
    assert code == 1 and "--duration must be at least 0.093" in err
    code, _, err = _generate(ckpt, tmp_path / "x.ogg", capsys=capsys)
    assert code == 1 and "--output must end in .wav, .flac or .mp3" in err
    code, _, err = _generate(ckpt, tmp_path / "x.wav", "--lyrics", "missing_lyrics.txt", capsys=capsys)
    assert code == 1 and "missing_lyrics.txt: lyrics file not found" in err
    assert not (tmp_path / "x.wav").exists()


def test_parse_lora():
    assert parse_lora("a.safetensors") == (Path("a.safetensors"), 1.0)
    assert parse_lora("out/step-000100:0.5") == (Path("out/step-000100"), 0.5)
    assert parse_lora("C:\\loras\\a.safetensors") == (Path("C:\\loras\\a.safetensors"), 1.0)
    assert parse_lora("C:\\loras\\a.safetensors:-1") == (Path("C:\\loras\\a.safetensors"), -1.0)
