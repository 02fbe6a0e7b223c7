"""Packed bf16 linear weights (`preprocessing/packed.py`): bit-identical encoders, on by default on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acetune.preprocessing import packed

pytestmark = pytest.mark.skipif(not packed.can_pack(torch.device("cpu"), torch.bfloat16),
                                reason="this CPU's oneDNN has no bf16 (packing is then never used)")


def _linears(model: nn.Module) -> tuple[int, int]:
    kinds = [type(m) for m in model.modules()]
    return kinds.count(nn.Linear), kinds.count(packed.PackedLinear)


def test_can_pack_only_bf16_on_the_cpu():
    assert not packed.can_pack(torch.device("cpu"), torch.float32)  # MKL sgemm: oneDNN would round differently
    assert not packed.can_pack(torch.device("cpu"), torch.float16)
    assert not packed.can_pack(torch.device("cuda"), torch.bfloat16)


def test_packed_linear_is_bit_identical_for_any_rows_and_leading_dims():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
        pl = packed.PackedLinear(linear, rows_hint=512)
        for shape in ((1, 96), (7, 96), (3, 375, 96), (2, 1, 600, 96)):
            x = (torch.randn(shape) * 3).to(torch.bfloat16)
            assert torch.equal(pl(x), linear(x)), (bias, shape)
        x = torch.randn(40, 96).to(torch.bfloat16).t().contiguous().t()  # column-major input
        assert torch.equal(pl(x), linear(x))
        assert pl.weight.dtype == torch.bfloat16 and pl.weight.shape == (200, 96)


def test_packed_ssl_model_gives_bit_identical_features():
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    model = HubertModel(config).eval().to(torch.bfloat16)
    x = torch.randn(3, 16000).to(torch.bfloat16)
    with torch.no_grad():
        before = model(x).last_hidden_state
        assert packed.pack_linears(model) == _linears(model)[1] > 0
        assert _linears(model)[0] == 0
        assert torch.equal(model(x).last_hidden_state, before)


def test_packed_text_encoder_gives_bit_identical_states(tmp_path):
    from acetune.models.v1.text_encoder import TextEncoder, save_tiny_umt5

    text = TextEncoder.from_pretrained(save_tiny_umt5(tmp_path / "umt5", num_layers=2, d_model=32),
                                       dtype=torch.bfloat16)
    prompts = ["rock, pop, female vocals", "a much longer prompt: ambient, slow, soft pads, 70 bpm", "x" * 300]
    hidden, mask = text.encode(prompts, path="dataset")
    assert packed.pack_encoders(type("Enc", (), {"text": text})())["text"] > 0
    hidden2, mask2 = text.encode(prompts, path="dataset")
    assert torch.equal(hidden2, hidden) and torch.equal(mask2, mask)


def test_fp32_linears_are_left_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4).to(torch.bfloat16))
    assert packed.pack_linears(model) == 1
    assert type(model[0]) is nn.Linear and type(model[1]) is packed.PackedLinear
