"""`--int8` loading (v1): each block quantized as soon as it is read == loading in bf16, then quantizing."""

from __future__ import annotations

import torch

from acetune.layout import V1_TRANSFORMER_DIR
from acetune.models.v1.family import FAMILY
from acetune.models.v1.transformer import ACEStepTransformer2DModel, tiny_transformer_config
from acetune.training.quantize import quantize_int8


def test_block_by_block_int8_load_equals_load_then_quantize(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ACEStepTransformer2DModel(**tiny_transformer_config()).save_pretrained(tmp_path / V1_TRANSFORMER_DIR)
    ref = FAMILY.load_transformer(tmp_path, dtype=torch.bfloat16, drop_unused=True)
    quantize_int8(ref)

    from acetune.models.v1 import loading
    from acetune.training import quantize

    events = []
    real_assign, real_block = loading._assign, quantize.quantize_block_int8
    monkeypatch.setattr(loading, "_assign", lambda m, key, v: events.append(key) or real_assign(m, key, v))
    got = FAMILY.load_transformer(tmp_path, dtype=torch.bfloat16, drop_unused=True,
                                  on_block=lambda block: events.append("quantize") or real_block(block))
    assert events.count("quantize") == 2
    # block 0 is quantized before any weight of block 1 is read
    assert events.index("quantize") < min(i for i, k in enumerate(events) if k.startswith("transformer_blocks.1."))
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 12, ref.inner_dim, generator=g).bfloat16()
    temb = torch.randn(1, 6 * ref.inner_dim, generator=g).bfloat16()
    ctx = torch.randn(1, 5, ref.inner_dim, generator=g).bfloat16()
    from acetune.models.v1.attention import cross_attention_mask, rope_tables

    rope, rope_c = rope_tables(12, 32, 1e6), rope_tables(5, 32, 1e6)
    allowed = cross_attention_mask(torch.ones(1, 12), torch.ones(1, 5))
    with torch.no_grad():
        outs = [m.transformer_blocks[1](x, None, ctx, allowed, temb, rope, rope_c) for m in (ref, got)]
    assert torch.equal(*outs)
