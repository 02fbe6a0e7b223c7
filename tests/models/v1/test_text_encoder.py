"""UMT5 text encoder: a tiny generated umt5-base/ folder loaded through the real code path."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from acetune.errors import CheckpointError
from acetune.models.v1.text_encoder import (
    PROMPT_MAX_CHARS,
    TEXT_MAX_TOKENS,
    UMT5_FILES,
    TextEncoder,
    save_tiny_umt5,
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_umt5(tmp_path_factory.mktemp("ckpt") / "umt5-base")


@pytest.fixture(scope="module")
def encoder(tiny_folder):
    return TextEncoder.from_pretrained(tiny_folder)


def test_tiny_folder_has_official_layout(tiny_folder):
    assert sorted(p.name for p in tiny_folder.iterdir()) == sorted(UMT5_FILES)


def test_encode_shapes_mask_and_eos(encoder):
    texts = ["pop rock", "ambient piano with soft strings, slow, dreamy"]
    hidden, mask = encoder.encode(texts)
    ids = encoder.tokenize(texts)["input_ids"]
    n_tokens = mask.sum(1)
    assert hidden.shape == (2, ids.shape[1], encoder.model.config.d_model)
    assert mask.dtype == torch.int64 and n_tokens[0] < n_tokens[1] == ids.shape[1]  # padding=True
    # UMT5 layout: pad 0, eos 1 appended after the last real token, then padding.
    assert ids[0, n_tokens[0] - 1] == 1 and (ids[0, n_tokens[0]:] == 0).all()
    # A padded item's valid states match it encoded alone (up to masked-softmax noise).
    alone, _ = encoder.encode(texts[:1])
    torch.testing.assert_close(hidden[0, : n_tokens[0]], alone[0], atol=1e-5, rtol=1e-5)


def test_dataset_path_cuts_to_256_characters_pipeline_does_not(encoder):
    long = "rock, " * 60  # 360 characters, fewer than 256 tokens
    cut_ids = encoder.tokenize([long], "dataset")["input_ids"]
    assert torch.equal(cut_ids, encoder.tokenize([long[:PROMPT_MAX_CHARS]], "pipeline")["input_ids"])
    full_ids = encoder.tokenize([long], "pipeline")["input_ids"]
    assert full_ids.shape[1] > cut_ids.shape[1]
    with pytest.raises(ValueError):
        encoder.tokenize([long], "train")


def test_truncates_to_256_tokens_with_eos(encoder):
    ids = encoder.tokenize(["zq " * 400], "pipeline")["input_ids"]
    assert ids.shape == (1, TEXT_MAX_TOKENS) and ids[0, -1] == 1


def test_erg_null_scales_q_in_blocks_8_and_9(tiny_folder, encoder):
    texts = ["jazz trio, swing"]
    null = encoder.encode_erg_null(texts)
    # Same thing by editing the weights: q(x) * 0.01 == (0.01 W) x (UMT5 q has no bias).
    edited = TextEncoder.from_pretrained(tiny_folder)
    for i in (8, 9):
        edited.model.encoder.block[i].layer[0].SelfAttention.q.weight.data *= 0.01
    ref, _ = edited.encode(texts, "pipeline")
    torch.testing.assert_close(null, ref, atol=1e-6, rtol=1e-5)
    plain, _ = encoder.encode(texts, "pipeline")
    assert (null - plain).abs().max() > 1e-3
    # the hooks are gone afterwards
    torch.testing.assert_close(encoder.encode(texts, "pipeline")[0], plain)


def test_dtype_and_device(tiny_folder):
    enc = TextEncoder.from_pretrained(tiny_folder, dtype=torch.bfloat16, device="cpu")
    hidden, mask = enc.encode(["lofi, chill"])
    assert hidden.dtype == torch.bfloat16 and hidden.device.type == "cpu"
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_missing_folder_and_files_raise_checkpoint_error(tmp_path, tiny_folder):
    with pytest.raises(CheckpointError, match="not found"):
        TextEncoder.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "umt5-base"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((tiny_folder / name).read_bytes())
    with pytest.raises(CheckpointError) as err:
        TextEncoder.from_pretrained(broken)
    line = str(err.value)
    assert "model.safetensors" in line and "special_tokens_map.json" in line and "\n" not in line


def test_weights_missing_a_tensor_raise(tmp_path, tiny_folder):
    folder = tmp_path / "umt5-base"
    folder.mkdir()
    for name in UMT5_FILES:
        (folder / name).write_bytes((tiny_folder / name).read_bytes())
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.block.3.layer.1.DenseReluDense.wo.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks 1 UMT5 encoder weights"):
        TextEncoder.from_pretrained(folder)
