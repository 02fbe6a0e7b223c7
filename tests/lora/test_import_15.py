"""`acetune export --input_name FILE` on ACE-Step 1.5 adapters from every trainer we know of.

Each layout is built here from a tiny 1.5 decoder + peft, with the key names that trainer writes
(official trainer: peft `save_pretrained` around the decoder; diffusers: `AceStepPipeline.save_lora_weights`;
Side-Step: `base_model.model.` or `diffusion_model.decoder.` + `.alpha`; LyCORIS: `lycoris_<path_>.lokr_*`;
kohya: `lora_unet_decoder_<path_>`; acetune: the saved layout). Each is converted to ComfyUI keys, and
ComfyUI's rule (written below from ../shared/facts/comfyui-lora.md) at strength 1.0 must give the
weights of the source model peft trained, to 1e-5.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoKrConfig, LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from acetune.cli import run_command
from acetune.lora import keys as lk

TOL = 1e-5
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


# ---- ComfyUI's 1.5 loader, from the facts file ----

def comfyui_apply(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], strength: float = 1.0) -> dict:
    """Weights `diffusion_model.decoder.<k>.weight` after ComfyUI loads `lora` at `strength`.

    Key map per model weight `<k>`: `base_model.model.<k>`, `lycoris_<k with . -> _>`,
    `diffusion_model.decoder.<k>`, `lora_unet_decoder_<k with . -> _>`. LoRA suffixes lora_up/lora_down,
    lora_B/lora_A; LoKr lokr_w1 | lokr_w1_a@lokr_w1_b, lokr_w2 | lokr_w2_a@lokr_w2_b, delta kron(w1, w2).
    Scale alpha / rank when `.alpha` exists (LoKr rank: of the decomposed factor; none: 1), else 1.
    DoRA (`.dora_scale`): W_calc = W + scale * delta; W_calc *= dora_scale / (||W||_row + eps); at strength
    s the result is W + s (W_calc - W). Asserts every key of `lora` was used.
    """
    out, used = {k: v.double().clone() for k, v in base.items()}, set()
    for key in base:
        k = key.removeprefix("diffusion_model.decoder.").removesuffix(".weight")
        flat = k.replace(".", "_")
        for prefix in (f"base_model.model.{k}", f"lycoris_{flat}", f"diffusion_model.decoder.{k}",
                       f"lora_unet_decoder_{flat}"):
            got = {n[len(prefix) + 1:]: t.double() for n, t in lora.items() if n.startswith(prefix + ".")}
            if not got:
                continue
            used |= {f"{prefix}.{n}" for n in got}
            rank = None
            for up, down in (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight")):
                if up in got:
                    delta, rank = got[up] @ got[down], got[down].shape[0]
            if any(n.startswith("lokr_") for n in got):
                w1 = got["lokr_w1"] if "lokr_w1" in got else got["lokr_w1_a"] @ got["lokr_w1_b"]
                rank = got["lokr_w1_b"].shape[0] if "lokr_w1_b" in got else None
                if "lokr_w2" in got:
                    w2 = got["lokr_w2"]
                else:
                    w2, rank = got["lokr_w2_a"] @ got["lokr_w2_b"], got["lokr_w2_b"].shape[0]
                delta = torch.kron(w1, w2)
            scale = float(got["alpha"]) / rank if "alpha" in got and rank else 1.0
            w = out[key]
            if "dora_scale" in got:
                calc = (w + scale * delta) * (got["dora_scale"] / (w.norm(dim=1, keepdim=True)
                                                                  + torch.finfo(base[key].dtype).eps))
                out[key] = w + strength * (calc - w)
            else:
                out[key] = w + strength * scale * delta
    assert used == set(lora), f"lora key not loaded: {sorted(set(lora) - used)[:3]}"
    return out


# ---- a tiny 1.5 decoder with the original names, and peft on it ----

class Node(torch.nn.Module):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory)


def build_tiny(tmp_path_factory):
    """(decoder tree with original 1.5 names, its transformer folder): the weights of a tiny diffusers DiT."""
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config

    torch.manual_seed(0)
    model = AceStepTransformer1DModel(**tiny_transformer_config())
    folder = tmp_path_factory.mktemp("v15") / "transformer"
    model.save_pretrained(folder)
    root = Node()
    for name, module in model.named_modules():
        original = lk.v15_module(name)
        if original is None or not isinstance(module, torch.nn.Linear):
            continue
        *path, leaf = original.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, Node())
            node = getattr(node, part)
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.load_state_dict(module.state_dict())
        node.add_module(leaf, linear)
    return root, folder


def comfy_base(tree) -> dict:
    return {f"diffusion_model.decoder.{k}": v for k, v in tree.state_dict().items() if k.endswith(".weight")}


def trained(tree, config, seed: int = 1):
    """(peft model with random non-zero adapter weights, expected ComfyUI weights after merging)."""
    model = get_peft_model(copy.deepcopy(tree), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(t in name for t in ("lora_", "lokr_")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "magnitude" in name else 0.0))
    merged = copy.deepcopy(model).merge_and_unload()
    return model, comfy_base(merged)


def state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors as peft saves them: `base_model.model.<module>.lora_A.weight`, ..."""
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def renamed(sd: dict, prefix: str, flat: bool = False, diffusers: bool = False, down_up: bool = False) -> dict:
    out = {}
    for key, t in sd.items():
        key = key.removeprefix("base_model.model.")
        module, _, kind = key.partition(".lora_") if ".lora_" in key else key.rpartition(".")
        kind = ("lora_" + kind) if ".lora_" in key else kind
        if diffusers:
            module = lk.v15_diffusers_module(module)
        if down_up:
            kind = kind.replace("lora_A.weight", "lora_down.weight").replace("lora_B.weight", "lora_up.weight")
        out[f"{prefix}{module.replace('.', '_') if flat else module}.{kind}"] = t
    return out


def with_alpha(sd: dict, alpha: float) -> dict:
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    return {**sd, **{f"{m}.alpha": torch.tensor(float(alpha)) for m in modules}}


def export(*argv) -> None:
    assert run_command("export", [str(a) for a in argv]) == 0


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    worst = max(((got[k] - want[k].double()).norm() / want[k].double().norm()).item() for k in want)
    assert worst <= TOL, worst


def merged_into_dit(transformer_dir: Path, source) -> dict:
    """ComfyUI-named weights of the tiny diffusers DiT after `adapters.merge_comfyui_file` (generate's path)."""
    from diffusers import AceStepTransformer1DModel

    from acetune.lora.import_15 import resolve_adapter_file
    from acetune.models.v15.adapters import merge_comfyui_file

    model = AceStepTransformer1DModel.from_pretrained(str(transformer_dir))
    merge_comfyui_file(model, resolve_adapter_file(source))
    return {f"diffusion_model.decoder.{lk.v15_module(n)}.weight": m.weight.detach() for n, m in model.named_modules()
            if lk.v15_module(n) and isinstance(m, torch.nn.Linear)}


# ---- one test per layout ----

def _official(tree, tmp_path):
    """The official 1.5 trainer: peft around the decoder, `save_pretrained` (r 8 / alpha 16 default)."""
    model, want = trained(tree, LoraConfig(r=8, lora_alpha=16, target_modules=ATTN))
    model.save_pretrained(tmp_path / "official")
    return tmp_path / "official", want


def _official_file(tree, tmp_path):
    folder, want = _official(tree, tmp_path)
    return folder / "adapter_model.safetensors", want


def _diffusers(tree, tmp_path):
    from diffusers import AceStepPipeline

    model, want = trained(tree, LoraConfig(r=4, lora_alpha=2, use_rslora=True, target_modules=ATTN + MLP))
    sd = {k.removeprefix("transformer."): v for k, v in renamed(state(model), "transformer.", diffusers=True).items()}
    config = {"r": 4, "lora_alpha": 2, "use_rslora": True, "target_modules": ["to_q", "to_k", "to_v", "to_out.0",
                                                                                *MLP]}
    AceStepPipeline.save_lora_weights(tmp_path / "diff", transformer_lora_layers=sd, weight_name="lora.safetensors",
                                      transformer_lora_adapter_metadata=config)
    return tmp_path / "diff" / "lora.safetensors", want


def _sidestep(prefix):
    def build(tree, tmp_path):
        model, want = trained(tree, LoraConfig(r=4, lora_alpha=8, target_modules=ATTN + MLP))
        path = tmp_path / "sidestep.safetensors"
        save_file(with_alpha(renamed(state(model), prefix), 8), str(path))
        return path, want
    return build


def _lycoris_lokr(tree, tmp_path):
    model, want = trained(tree, LoKrConfig(r=2, alpha=4, target_modules=ATTN))
    sd = renamed(state(model), "lycoris_", flat=True)
    assert sum(k.endswith(".lokr_w2_b") for k in sd) == 16  # every w2 decomposed: ComfyUI reads alpha / 2
    path = tmp_path / "lokr.safetensors"
    save_file(with_alpha(sd, 4), str(path))
    return path, want


def _kohya(tree, tmp_path):
    model, want = trained(tree, LoraConfig(r=4, lora_alpha=1, target_modules=ATTN))
    path = tmp_path / "kohya.safetensors"
    save_file(with_alpha(renamed(state(model), "lora_unet_decoder_", flat=True, down_up=True), 1), str(path))
    return path, want


def _acetune_step(tree, tmp_path):
    """Our saved layout (diffusers names, adapter_config.json beside), WITHOUT train_config.json."""
    model, want = trained(tree, LoraConfig(r=4, lora_alpha=2, use_rslora=True, target_modules=ATTN))
    step = tmp_path / "step-000010"
    step.mkdir()
    save_file(renamed(state(model), "", diffusers=True), str(step / lk.LORA_WEIGHTS_FILE), metadata=lk.SAVED_METADATA)
    (step / lk.ADAPTER_CONFIG_FILE).write_text(json.dumps({"r": 4, "lora_alpha": 2, "use_rslora": True,
                                                           "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}))
    return step, want


LAYOUTS = {"official-folder": _official, "official-file": _official_file, "diffusers": _diffusers,
           "sidestep-native": _sidestep("base_model.model."), "sidestep-comfyui": _sidestep("diffusion_model.decoder."),
           "sidestep-legacy": _sidestep("diffusion_model."), "peft-whole-model": _sidestep("base_model.model.decoder."),
           "lycoris-lokr": _lycoris_lokr, "kohya": _kohya, "acetune-step": _acetune_step}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_converts_to_comfyui_at_trained_strength(tiny, tmp_path, layout):
    tree, _ = tiny
    source, want = LAYOUTS[layout](tree, tmp_path)
    out = tmp_path / "comfy.safetensors"
    export("--input_name", source, "--format", "comfyui", "--output_name", out)
    lora = load_file(str(out))
    assert all(k.startswith("base_model.model.layers.") for k in lora)
    assert_close(comfyui_apply(comfy_base(tree), lora), want)
    # `acetune generate --lora` merges the source file itself into the diffusers DiT at the same weights
    assert_close(merged_into_dit(tiny[1], source), want)
    # ...and reading our own export back (its metadata says baked) changes nothing
    again = tmp_path / "again.safetensors"
    export("--input_name", out, "--format", "comfyui", "--output_name", again)
    assert_close(comfyui_apply(comfy_base(tree), load_file(str(again))), want)


def test_official_file_is_half_strength_without_conversion(tiny, tmp_path):
    """Why converting matters: ComfyUI applies the official r 8 / alpha 16 file at scale 1, not 2."""
    tree, _ = tiny
    folder, want = _official(tree, tmp_path)
    raw = comfyui_apply(comfy_base(tree), load_file(str(folder / "adapter_model.safetensors")))
    base = {k: v.double() for k, v in comfy_base(tree).items()}
    for k in want:
        if not torch.equal(want[k].double(), base[k]):
            torch.testing.assert_close(raw[k] - base[k], (want[k].double() - base[k]) / 2, rtol=1e-5, atol=1e-7)


def test_write_alpha_and_kohya_equal_baked(tiny, tmp_path):
    tree, _ = tiny
    source, want = _official(tree, tmp_path)
    for extra in (("--write_alpha",), ("--format", "kohya"), ("--format", "kohya", "--write_alpha")):
        out = tmp_path / f"{'_'.join(extra).strip('-')}.safetensors"
        export("--input_name", source, *extra, "--output_name", out)
        lora = load_file(str(out))
        assert any(k.endswith(".alpha") for k in lora) == ("--write_alpha" in extra)
        assert_close(comfyui_apply(comfy_base(tree), lora), want)


def test_diffusers_output_from_official(tiny, tmp_path):
    """`--format peft` on the official file: the diffusers layout with the scale in its embedded config."""
    from acetune.lora.import_15 import read_adapter_15

    tree, _ = tiny
    source, want = _official(tree, tmp_path)
    out = tmp_path / "d" / "x.safetensors"
    export("--input_name", source, "--output_name", out)
    assert out.is_file() and all(k.startswith("transformer.layers.") for k in load_file(str(out)))
    back = read_adapter_15(out)
    assert set(back.scales.values()) == {2.0} and back.scale_source == "safetensors metadata"
    assert back.width == 32  # the tiny decoder's hidden size, read from the shapes


def test_unmappable_keys_are_named(tiny, tmp_path, capsys):
    tree, _ = tiny
    model, _ = trained(tree, LoraConfig(r=4, lora_alpha=4, target_modules=ATTN))
    sd = with_alpha(renamed(state(model), "base_model.model."), 4)
    sd["base_model.model.layers.0.norm.lora_A.weight"] = torch.ones(4, 32)
    sd["base_model.model.proj_in.hada_w1_a"] = torch.ones(2, 2)
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    capsys.readouterr()
    assert run_command("export", ["--input_name", str(path), "--format", "comfyui"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 of" in err and "layers.0.norm.lora_A.weight" in err and "hada_w1_a" in err


def test_no_scale_is_refused_not_guessed(tiny, tmp_path, capsys):
    tree, _ = tiny
    folder, want = _official(tree, tmp_path)
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((folder / "adapter_model.safetensors").read_bytes())
    capsys.readouterr()
    assert run_command("export", ["--input_name", str(lone), "--format", "comfyui"]) == 1
    assert "scale is unknown" in capsys.readouterr().err
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    out = tmp_path / "ok.safetensors"
    export("--input_name", lone, "--lora_config_path", cfg, "--format", "comfyui", "--output_name", out)
    assert_close(comfyui_apply(comfy_base(tree), load_file(str(out))), want)


# ---- DoRA ----

def test_dora_export_matches_peft(tiny, tmp_path, capsys):
    tree, transformer = tiny
    model, want = trained(tree, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=ATTN + MLP))
    model.save_pretrained(tmp_path / "dora")
    assert any(k.endswith("lora_magnitude_vector") for k in load_file(str(tmp_path / "dora" / "adapter_model.safetensors")))
    out = tmp_path / "dora.safetensors"
    export("--input_name", tmp_path / "dora", "--format", "comfyui", "--checkpoint_dir", transformer.parent,
           "--output_name", out)
    lora = load_file(str(out))
    assert sum(k.endswith(".dora_scale") for k in lora) == 22
    assert_close(comfyui_apply(comfy_base(tree), lora), want)
    for source in (tmp_path / "dora", out):  # generate's merge: peft's magnitude, or our dora_scale
        assert_close(merged_into_dit(transformer, source), want)
    capsys.readouterr()
    for argv, message in ((["--format", "comfyui"], "--checkpoint_dir"), (["--format", "peft"], "plain LoRA only"),
                          (["--merge", "--checkpoint_dir", str(transformer)], "--merge")):
        assert run_command("export", ["--input_name", str(tmp_path / "dora"), "--output_name",
                                      str(tmp_path / "x.safetensors"), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err


def test_checkpoint_dir_checks_widths(tiny, tmp_path, capsys):
    """--checkpoint_dir (or the one a step's train_config.json names) checks every module against the base."""
    from diffusers import AceStepTransformer1DModel

    from acetune.models.v15.tiny import tiny_transformer_config

    tree, transformer = tiny
    source, want = _official(tree, tmp_path)
    out = tmp_path / "ok.safetensors"
    export("--input_name", source, "--format", "comfyui", "--checkpoint_dir", transformer.parent, "--output_name", out)
    assert_close(comfyui_apply(comfy_base(tree), load_file(str(out))), want)
    wider = tmp_path / "wide" / "transformer"
    AceStepTransformer1DModel(**{**tiny_transformer_config(), "hidden_size": 64, "intermediate_size": 96}
                              ).save_pretrained(wider)
    capsys.readouterr()
    assert run_command("export", ["--input_name", str(source), "--format", "comfyui", "--checkpoint_dir",
                                  str(wider.parent), "--output_name", str(tmp_path / "no.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "features" in err and not (tmp_path / "no.safetensors").exists()


def test_no_model_known_checks_blocks_agree_and_warns_of_an_unreleased_width(tiny, tmp_path, capsys, caplog):
    tree, _ = tiny
    source, _ = _official(tree, tmp_path)
    weights = source / "adapter_model.safetensors"
    with caplog.at_level("WARNING"):  # tiny width: written, with a warning naming the released widths
        export("--input_name", weights, "--format", "comfyui", "--output_name", tmp_path / "ok.safetensors")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "no released ACE-Step 1.5 model has (2048 2B, 2560 XL)" in warned and "--checkpoint_dir" in warned
    sd = load_file(str(weights))
    odd = sorted(k for k in sd if ".layers.1." in k and "lora_A" in k)[0]
    sd[odd] = torch.ones(sd[odd].shape[0], 133)
    save_file(sd, str(weights))
    capsys.readouterr()
    out = tmp_path / "no.safetensors"
    assert run_command("export", ["--input_name", str(weights), "--format", "comfyui", "--output_name", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "maps 133 ->" in err and "modules map" in err and not out.exists()
