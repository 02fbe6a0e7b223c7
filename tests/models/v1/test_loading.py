"""Loading the v1 transformer from official-layout folders; bad folders fail with one line; the family."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from acetune.errors import CheckpointError
from acetune.layout import CONFIG_FILE, V1_COMPONENT_DIRS, WEIGHTS_FILE, WEIGHTS_INDEX_FILE
from acetune.models.family import detect_family, get_family
from acetune.models.v1.loading import TEXT_ENCODER_FILES
from acetune.models.v1.transformer import (
    ACEStepTransformer2DModel,
    build_transformer,
    tiny_transformer_config,
)
from acetune.parity.det_init import det_init_


def official_config(**overrides) -> dict:
    """A config.json the way the official release spells it (class name, ignored inner_dim)."""
    cfg = {"_class_name": "Transformer2DModel", "_diffusers_version": "0.27.2", "inner_dim": 64,
           **tiny_transformer_config(), **overrides}
    return cfg


@pytest.fixture(scope="module")
def tiny_model():
    model = build_transformer(tiny_transformer_config())
    det_init_(model)
    return model.eval()


@pytest.fixture
def folder(tmp_path, tiny_model):
    """An official-layout ace_step_transformer/ folder with a single weights file."""
    out = tmp_path / "ace_step_transformer"
    out.mkdir()
    (out / CONFIG_FILE).write_text(json.dumps(official_config()))
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(out / WEIGHTS_FILE))
    return out


def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 8, 16, 12, generator=g), attention_mask=torch.ones(1, 12),
                encoder_text_hidden_states=torch.randn(1, 4, 32, generator=g), text_attention_mask=torch.ones(1, 4),
                speaker_embeds=torch.randn(1, 16, generator=g), lyric_token_idx=torch.tensor([[261, 5, 7]]),
                lyric_mask=torch.ones(1, 3), timestep=torch.tensor([500.0]))


def test_load_official_single_file(folder, tiny_model):
    model = ACEStepTransformer2DModel.from_pretrained(folder)
    assert isinstance(model, ACEStepTransformer2DModel) and not model.training
    # Bit-equal outputs need the weights in fresh 64-byte aligned memory: safetensors' tensors start
    # mid-buffer, and CPU GEMM takes another kernel path on unaligned weights (last-bit differences).
    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(**inputs()).sample, tiny_model(**inputs()).sample)


def test_save_pretrained_sharded_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert (tmp_path / "sharded" / WEIGHTS_INDEX_FILE).is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    model = ACEStepTransformer2DModel.from_pretrained(tmp_path / "sharded", torch_dtype=torch.bfloat16)
    ref = tiny_model.state_dict()
    assert all(torch.equal(v, ref[k].bfloat16()) for k, v in model.state_dict().items())
    tiny_model.save_pretrained(tmp_path / "single")
    again = ACEStepTransformer2DModel.from_pretrained(tmp_path / "single")
    assert {k: v for k, v in again.config.items() if not k.startswith("_")} == {
        k: v for k, v in tiny_model.config.items() if not k.startswith("_")}


def test_drop_unused_skips_add_projections(folder, tiny_model):
    model = ACEStepTransformer2DModel.from_pretrained(folder, drop_unused=True)
    keys = set(model.state_dict())
    assert not [k for k in keys if ".add_" in k or "to_add_out" in k]
    assert len(tiny_model.state_dict()) - len(keys) == 2 * 8
    with torch.no_grad():
        assert torch.equal(model(**inputs()).sample, tiny_model(**inputs()).sample)


def one_line_error(folder, *needles):
    with pytest.raises(CheckpointError) as err:
        ACEStepTransformer2DModel.from_pretrained(folder)
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_wrong_class_name(folder):
    (folder / CONFIG_FILE).write_text(json.dumps(official_config(_class_name="AutoencoderDC")))
    one_line_error(folder, CONFIG_FILE, "_class_name")


def test_unknown_config_key(folder):
    (folder / CONFIG_FILE).write_text(json.dumps(official_config(latent_channels=32)))
    one_line_error(folder, CONFIG_FILE, "latent_channels")


def test_bad_config_value(folder):
    (folder / CONFIG_FILE).write_text(json.dumps(official_config(num_layers="two")))
    one_line_error(folder, CONFIG_FILE, "num_layers")


def test_missing_config_and_weights(folder):
    (folder / WEIGHTS_FILE).unlink()
    one_line_error(folder, WEIGHTS_FILE)
    (folder / CONFIG_FILE).unlink()
    one_line_error(folder, CONFIG_FILE)


def test_mismatched_shape_names_file_and_key(folder):
    (folder / CONFIG_FILE).write_text(json.dumps(official_config(speaker_embedding_dim=20)))
    one_line_error(folder, WEIGHTS_FILE, "speaker_embedder.weight", "[64, 16]")


def test_missing_and_unexpected_keys(folder):
    sd = load_file(str(folder / WEIGHTS_FILE))
    extra = dict(sd, **{"pos_embed.weight": torch.zeros(2)})
    save_file(extra, str(folder / WEIGHTS_FILE))
    one_line_error(folder, WEIGHTS_FILE, "pos_embed.weight", "unexpected")
    del sd["lyric_proj.bias"]
    save_file(sd, str(folder / WEIGHTS_FILE))
    one_line_error(folder, WEIGHTS_FILE, "lyric_proj.bias", "missing")


def test_missing_shard(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, max_shard_size="1MB")
    index = json.loads((tmp_path / WEIGHTS_INDEX_FILE).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    one_line_error(tmp_path, shard)


def make_checkpoint(root, folder):
    """A full v1 checkpoint folder (the transformer real, the other components as empty stand-ins)."""
    for sub in V1_COMPONENT_DIRS:
        (root / sub).mkdir(exist_ok=True)
    for sub in V1_COMPONENT_DIRS[1:3]:
        (root / sub / CONFIG_FILE).write_text("{}")
        (root / sub / WEIGHTS_FILE).write_bytes(b"")
    for name in TEXT_ENCODER_FILES:
        (root / "umt5-base" / name).write_text("{}")
    return root


def test_family_detect_check_load(folder, tiny_model):
    root = make_checkpoint(folder.parent, folder)
    family = detect_family(root)
    assert family is get_family("ace-step-v1") and family.name == "ace-step-v1"
    family.check_checkpoint(root)
    assert "to_out.0" in family.default_lora_targets
    model = family.load_transformer(root, dtype=torch.bfloat16, drop_unused=True)
    assert next(model.parameters()).dtype == torch.bfloat16
    h = family.config_hash(root)
    assert len(h) == 16 and h == family.config_hash(root)
    (root / "umt5-base" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        family.check_checkpoint(root)
    with pytest.raises(CheckpointError, match="unknown model family"):
        get_family("ace-step-9")


def test_detect_family_rejects_other_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        detect_family(tmp_path)
