import json

import pytest
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model

from acetune.errors import InputError
from acetune.lora import keys as lk

SAMPLE_MODULES = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.23.attn.to_out.0",
    "transformer_blocks.7.cross_attn.add_k_proj",
    "transformer_blocks.7.cross_attn.to_add_out",
    "lyric_encoder.encoders.5.self_attn.linear_pos",
    "lyric_encoder.encoders.5.feed_forward.w_1",
    "lyric_encoder.embed.out.0",
    "timestep_embedder.linear_1",
    "t_block.1",
    "final_layer.linear",
    "projectors.1.4",
    "speaker_embedder",
]


@pytest.mark.parametrize("style", lk.KEY_STYLES)
@pytest.mark.parametrize("kind", lk.KINDS)
def test_format_parse_round_trip(style, kind):
    for module in SAMPLE_MODULES:
        key = lk.format_key(module, kind, style)
        assert lk.parse_key(key) == (module, kind), key


def test_documented_forms():
    m = "transformer_blocks.0.attn.to_q"
    assert lk.saved_key(m, lk.LORA_A) == "transformer_blocks.0.attn.to_q.lora_A.weight"
    assert lk.format_key(m, lk.LORA_B, lk.STYLE_COMFYUI) == "diffusion_model.transformer_blocks.0.attn.to_q.lora_B.weight"
    assert lk.format_key(m, lk.LORA_A, lk.STYLE_KOHYA) == "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"
    assert lk.format_key(m, lk.ALPHA, lk.STYLE_KOHYA) == "lora_unet_transformer_blocks_0_attn_to_q.alpha"
    assert lk.ADAPTER_CONFIG_FILE == "adapter_config.json"
    assert lk.LORA_WEIGHTS_FILE == "pytorch_lora_weights.safetensors"
    # Forms we read but ComfyUI does not map for v1.
    for key in ("base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight",
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                "transformer_blocks.0.attn.to_q.lora_A.default.weight",
                "diffusion_model.transformer_blocks.0.attn.to_q.lora_down.weight"):
        assert lk.parse_key(key) == (m, lk.LORA_A), key


def test_names_match_peft_and_diffusers():
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
    from peft.utils import CONFIG_NAME

    assert (lk.ADAPTER_CONFIG_FILE, lk.LORA_WEIGHTS_FILE, lk.ADAPTER_METADATA_KEY) == (
        CONFIG_NAME, LORA_WEIGHT_NAME_SAFE, LORA_ADAPTER_METADATA_KEY)


@pytest.mark.parametrize("key", [
    "transformer_blocks.0.attn.to_q.weight",
    "transformer_blocks.0.attn.to_q.lokr_w1",
    "lycoris_transformer_blocks_0_attn_to_q.lora_A.weight",
    "unet.transformer_blocks.0.attn.to_q.lora_A.weight",
    "lora_te_text_model_encoder_layers_0.lora_down.weight",
    "lora_unet_down_blocks_0.lora_down.weight",
    ".lora_A.weight",
])
def test_rejects_unmappable(key):
    with pytest.raises(ValueError):
        lk.parse_key(key)


def test_kohya_with_module_list():
    modules = ["transformer_blocks.0.attn.to_q", "foo_bar.baz"]
    assert lk.module_from_kohya("lora_unet_foo_bar_baz", modules) == "foo_bar.baz"
    with pytest.raises(ValueError):
        lk.module_from_kohya("lora_unet_nothing_here", modules)


def test_kohya_round_trip_every_official_module(golden):
    """Every 2-D weight of the official 874-key transformer survives the kohya rename and back."""
    keys = json.loads((golden / "v1_full_manifest.json").read_text())["models"]["ace_step_transformer"]["keys"]
    modules = [k[:-len(".weight")] for k, v in keys.items() if k.endswith(".weight") and len(v["shape"]) == 2]
    assert len(modules) == 345
    for m in modules:
        assert lk.module_from_kohya(lk.kohya_name(m)) == m
        assert lk.parse_key(lk.format_key(m, lk.ALPHA, lk.STYLE_KOHYA)) == (m, lk.ALPHA)


def _pair(r=2, i=3, o=5):
    return torch.randn(r, i), torch.randn(o, r)


def test_split_modules_groups_and_errors(tmp_path):
    a, b = _pair()
    sd = {"diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight": a,
          "diffusion_model.transformer_blocks.0.attn.to_q.lora_B.weight": b,
          "diffusion_model.transformer_blocks.0.attn.to_q.alpha": torch.tensor(2.0)}
    g = lk.split_modules(sd)
    assert set(g) == {"transformer_blocks.0.attn.to_q"} and set(g["transformer_blocks.0.attn.to_q"]) == {lk.LORA_A, lk.LORA_B, lk.ALPHA}
    path = tmp_path / "x.safetensors"
    bad_cases = [
        ({}, "no LoRA tensors"),
        ({"transformer_blocks.0.attn.to_q.weight": a}, "not LoRA keys"),
        ({"transformer_blocks.0.attn.to_q.lora_A.weight": a}, "lacks its lora_B"),
        ({"transformer_blocks.0.attn.to_q.lora_A.weight": a, "transformer_blocks.0.attn.to_q.lora_B.weight": b.T},
         "not a linear LoRA pair"),
        ({"transformer_blocks.0.attn.to_q.lora_A.weight": a,
          "diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight": a}, "appears twice"),
    ]
    for sd_bad, msg in bad_cases:
        with pytest.raises(InputError, match=msg) as err:
            lk.split_modules(sd_bad, path=path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def _net():
    net = torch.nn.Module()
    net.transformer_blocks = torch.nn.ModuleList()
    for _ in range(2):
        blk = torch.nn.Module()
        blk.attn = torch.nn.Module()
        blk.attn.to_q = torch.nn.Linear(4, 4)
        blk.attn.to_out = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Dropout(0.0)])
        net.transformer_blocks.append(blk)
    return net


def test_saved_state_dict_from_peft_models():
    cfg = dict(r=2, lora_alpha=1, target_modules=["to_q", "to_out.0"])
    expected = {lk.saved_key(f"transformer_blocks.{i}.attn.{m}", k)
                for i in range(2) for m in ("to_q", "to_out.0") for k in (lk.LORA_A, lk.LORA_B)}
    injected = inject_adapter_in_model(LoraConfig(**cfg), _net(), adapter_name="lora_adapter")
    assert set(lk.saved_lora_state_dict(injected, "lora_adapter")) == expected
    wrapped = get_peft_model(_net(), LoraConfig(**cfg))  # keys come back with base_model.model.
    assert set(lk.saved_lora_state_dict(wrapped)) == expected
