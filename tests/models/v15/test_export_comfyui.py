"""`acetune export --comfyui_checkpoint --comfyui_base`: an ACE-Step 1.5 full fine-tune (diffusers transformer
folder) written into ComfyUI's 1.5 file. The base files are generated from `comfyui_tree` (ComfyUI's module
tree as a spec, checked against ComfyUI's own class), so the name mapping is tested against ComfyUI's names."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tests.models.v15.comfyui_tree import comfyui_15_shapes, save_comfyui_base, tiny_comfyui_config

from acetune.cli import run_command
from acetune.models.v15.export_comfyui import comfyui_name, export_command
from acetune.safetensors_stream import ITEM_SIZE, read_header

AIO = "model.diffusion_model."  # ComfyUI's all-in-one checkpoint prefix


def _tuned_folder(path, xl: bool, dtype=torch.bfloat16, seed: int = 3):
    """A diffusers 1.5 transformer folder whose every weight is random (so a swapped tensor cannot pass)."""
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config

    model = AceStepTransformer1DModel(**tiny_transformer_config(xl=xl))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{(size, what): path} for the tiny 2B and XL: the tuned folder, a ComfyUI file, an all-in-one checkpoint."""
    root = tmp_path_factory.mktemp("comfy15")
    out = {}
    for size, xl in (("2b", False), ("xl", True)):
        out[size, "tuned"] = _tuned_folder(root / f"{size}_run" / "transformer", xl)
        out[size, "base"] = save_comfyui_base(root / f"acestep_{size}.safetensors", tiny_comfyui_config(xl))
    vae = {"vae.decoder.conv.weight": torch.randn(4, 4, 3), "text_encoders.qwen3_2b.w": torch.randn(3, 3)}
    out["2b", "aio"] = save_comfyui_base(root / "aio.safetensors", tiny_comfyui_config(), prefix=AIO, extra=vae)
    return out


def _export(folder, base, out, *extra) -> int:
    return run_command("export", ["--comfyui_checkpoint", "--input_name", str(folder), "--comfyui_base", str(base),
                                  "--output_name", str(out), *extra])


@pytest.mark.parametrize("xl", [False, True], ids=["2b", "xl"])
def test_decoder_mapping_is_a_bijection_onto_comfyuis_decoder(xl):
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in AceStepTransformer1DModel(**tiny_transformer_config(xl=xl)).state_dict().items()}
    theirs = {k: s for k, s in comfyui_15_shapes(tiny_comfyui_config(xl)).items() if k.startswith("decoder.")}
    mapped = {comfyui_name(k): s for k, s in ours.items()}
    assert len(mapped) == len(ours)  # one-to-one
    assert mapped == theirs  # onto ComfyUI's decoder, same shapes
    assert comfyui_name("proj_in_conv.weight") == "decoder.proj_in.1.weight"
    assert comfyui_name("layers.1.cross_attn.to_out.0.weight") == "decoder.layers.1.cross_attn.o_proj.weight"
    assert comfyui_name("layers.0.self_attn.norm_k.weight") == "decoder.layers.0.self_attn.k_norm.weight"


@pytest.mark.parametrize("case", [("2b", "base", ""), ("xl", "base", ""), ("2b", "aio", AIO)],
                         ids=["2b", "xl", "all-in-one"])
def test_export_replaces_every_decoder_tensor_and_keeps_the_rest_byte_equal(made, tmp_path, capsys, case):
    size, kind, prefix = case
    folder, base = made[size, "tuned"], made[size, kind]
    out = tmp_path / "tuned_comfyui.safetensors"
    assert _export(folder, base, out) == 0
    got, before, tuned = load_file(str(out)), load_file(str(base)), load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert set(got) == set(before)
    by_comfy = {prefix + comfyui_name(k): k for k in tuned}
    assert set(by_comfy) == {k for k in before if k.startswith(prefix + "decoder.")}
    for key, t in got.items():
        want = tuned[by_comfy[key]] if key in by_comfy else before[key]
        assert t.dtype == want.dtype and t.shape == want.shape
        assert torch.equal(t.view(torch.uint8), want.view(torch.uint8)), key  # byte for byte
    assert sum(not torch.equal(got[k], before[k]) for k in by_comfy) == len(by_comfy)  # really replaced
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == "pt"  # the base's metadata is kept
    line = capsys.readouterr().out
    assert f"{len(by_comfy)} decoder tensors" in line
    assert ("Load Checkpoint" if prefix else "Load Diffusion Model") in line


def test_fp32_fine_tune_keeps_its_dtype_in_a_bf16_base(made, tmp_path):
    folder = _tuned_folder(tmp_path / "fp32" / "transformer", xl=False, dtype=torch.float32)
    out = tmp_path / "o.safetensors"
    assert _export(folder, made["2b", "base"], out) == 0
    got, tuned = load_file(str(out)), load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(got[comfyui_name(k)], v) and got[comfyui_name(k)].dtype == torch.float32
               for k, v in tuned.items())
    assert got["encoder.text_projector.weight"].dtype == torch.bfloat16
    stored, _ = read_header(out)  # mixed widths: every tensor still starts at a multiple of its item size
    first = min(t.start for t in stored.values())
    assert all((t.start - first) % ITEM_SIZE[t.dtype] == 0 for t in stored.values())
    assert first % 8 == 0


def _edited_base(made, tmp_path, edit):
    state = load_file(str(made["2b", "base"]))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


def _fail(capsys, *args) -> str:
    assert _export(*args) == 1
    return capsys.readouterr().err


def test_a_base_of_the_other_width_is_refused(made, tmp_path, capsys):
    err = _fail(capsys, made["2b", "tuned"], made["xl", "base"], tmp_path / "o.safetensors")
    assert "decoder is 40 wide; the fine-tune's is 32 wide" in err and "acestep_xl.safetensors" in err
    err = _fail(capsys, made["xl", "tuned"], made["2b", "base"], tmp_path / "o.safetensors")
    assert "decoder is 32 wide; the fine-tune's is 40 wide" in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("edit, says", [
    (lambda s: s.pop("decoder.layers.1.mlp.up_proj.weight"), "1 fine-tuned tensors have no place in the base"),
    (lambda s: s.update({"decoder.layers.0.self_attn.q_proj.scale_weight": torch.ones(1)}),
     "1 decoder tensors of the base have no fine-tuned tensor (first: decoder.layers.0.self_attn.q_proj.scale_weight)"),
    (lambda s: s.update({"decoder.layers.0.mlp.gate_proj.weight": torch.zeros(64, 30, dtype=torch.bfloat16)}),
     "decoder.layers.0.mlp.gate_proj.weight is [64, 30] there, [64, 32] in the fine-tune"),
    (lambda s: s.update({"decoder.norm_out.weight": torch.ones(32).to(torch.float8_e4m3fn)}), "is F8_E4M3"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("decoder.layers.1.")], "its decoder has 1 layers; the fine-tune's has 2"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("encoder.")],
     "a transformer without ComfyUI's condition encoder"),
], ids=["missing", "extra", "shape", "fp8", "layers", "no-encoder"])
def test_a_base_that_does_not_fit_is_refused_in_one_line(made, tmp_path, capsys, edit, says):
    base = _edited_base(made, tmp_path, edit)
    err = _fail(capsys, made["2b", "tuned"], base, tmp_path / "o.safetensors")
    assert says in err and str(base) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_other_files_as_base_are_named_for_what_they_are(made, tmp_path, capsys):
    diffusers_file = made["2b", "tuned"] / "diffusion_pytorch_model.safetensors"
    assert "a transformer without ComfyUI's condition encoder" in _fail(capsys, made["2b", "tuned"], diffusers_file,
                                                                       tmp_path / "o.safetensors")
    v1 = tmp_path / "v1.safetensors"
    save_file({"genre_embedder.weight": torch.zeros(2, 2)}, str(v1))
    assert "an ACE-Step v1 file" in _fail(capsys, made["2b", "tuned"], v1, tmp_path / "o.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "not a safetensors file" in _fail(capsys, made["2b", "tuned"], junk, tmp_path / "o.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(made["2b", "base"].read_bytes()[:-100])
    assert "does not fit its header (truncated or damaged file)" in _fail(capsys, made["2b", "tuned"], cut,
                                                                          tmp_path / "o.safetensors")


def test_flags_are_checked_before_anything_is_written(made, tmp_path, capsys):
    folder, base = made["2b", "tuned"], made["2b", "base"]
    assert run_command("export", ["--comfyui_checkpoint", "--input_name", str(folder)]) == 1
    assert "also needs --comfyui_base" in capsys.readouterr().err
    assert run_command("export", ["--input_name", str(folder), "--comfyui_base", str(base)]) == 1
    assert "--comfyui_base belongs to --comfyui_checkpoint" in capsys.readouterr().err
    assert "is the --comfyui_base file" in _fail(capsys, folder, base, base, "--overwrite")
    assert "not found" in _fail(capsys, folder, tmp_path / "nope.safetensors", tmp_path / "o.safetensors")
    (tmp_path / "o.safetensors").write_bytes(b"x")
    assert "exists already" in _fail(capsys, folder, base, tmp_path / "o.safetensors")


def test_the_command_a_full_run_prints_names_the_folder():
    line = export_command("out dir/transformer")
    assert line.startswith('acetune export --comfyui_checkpoint --input_name "out dir/transformer" --comfyui_base ')
