"""ComfyUI's ACE-Step 1.5 model (`AceStepConditionGenerationModel`, comfy/ldm/ace/ace_step15.py) as a spec:
every weight name and shape for a config, written from its module tree (read 2026-12, ComfyUI May 2026,
XL support included). Tests build a tiny "released ComfyUI file" from it with generated weights, so the
export is checked against ComfyUI's names, not against its own mapping.

Checked once against ComfyUI's own class (tiny 2B and XL configs, same key set and shapes; see the
report in docs/export.md "ACE-Step 1.5 single file").
"""

from __future__ import annotations

from pathlib import Path

import torch

FSQ_LEVELS = 6  # len([8, 8, 8, 5, 5, 5]): the tokenizer's codebook dimension


def _linear(out: dict, name: str, n_out: int, n_in: int, bias: bool) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def _attention(out: dict, name: str, width: int, heads: int, kv_heads: int, head_dim: int) -> None:
    for proj, n_out in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim), ("v_proj", kv_heads * head_dim)):
        _linear(out, f"{name}.{proj}", n_out, width, bias=False)
    _linear(out, f"{name}.o_proj", width, heads * head_dim, bias=False)
    out[f"{name}.q_norm.weight"] = out[f"{name}.k_norm.weight"] = (head_dim,)


def _mlp(out: dict, name: str, width: int, inner: int) -> None:
    _linear(out, f"{name}.gate_proj", inner, width, bias=False)
    _linear(out, f"{name}.up_proj", inner, width, bias=False)
    _linear(out, f"{name}.down_proj", width, inner, bias=False)


def _encoder_layer(out: dict, name: str, width: int, heads: int, kv_heads: int, head_dim: int, inner: int) -> None:
    _attention(out, f"{name}.self_attn", width, heads, kv_heads, head_dim)
    out[f"{name}.input_layernorm.weight"] = out[f"{name}.post_attention_layernorm.weight"] = (width,)
    _mlp(out, f"{name}.mlp", width, inner)


def _stack(out: dict, name: str, n_in: int, width: int, layers: int, heads: int, kv_heads: int, head_dim: int,
           inner: int) -> None:
    """embed_tokens (with bias) + encoder layers + final RMSNorm: the lyric / timbre encoders, pooler, detokenizer."""
    _linear(out, f"{name}.embed_tokens", width, n_in, bias=True)
    out[f"{name}.norm.weight"] = (width,)
    for i in range(layers):
        _encoder_layer(out, f"{name}.layers.{i}", width, heads, kv_heads, head_dim, inner)


def comfyui_15_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """{key: shape} of ComfyUI's 1.5 model. `c`: hidden, inner, layers, heads, kv_heads, head_dim, in_channels,
    acoustic, patch, enc_hidden, enc_inner, enc_heads, text_dim, timbre_dim, lyric_layers, timbre_layers,
    tokenizer_layers, pool."""
    h, hd, kv, e = c["hidden"], c["head_dim"], c["kv_heads"], c["enc_hidden"]
    out: dict[str, tuple[int, ...]] = {}
    # decoder (AceStepDiTModel)
    out["decoder.proj_in.1.weight"], out["decoder.proj_in.1.bias"] = (h, c["in_channels"], c["patch"]), (h,)
    for t in ("time_embed", "time_embed_r"):
        _linear(out, f"decoder.{t}.linear_1", h, 256, bias=True)
        _linear(out, f"decoder.{t}.linear_2", h, h, bias=True)
        _linear(out, f"decoder.{t}.time_proj", 6 * h, h, bias=True)
    _linear(out, "decoder.condition_embedder", h, e, bias=True)
    for i in range(c["layers"]):
        n = f"decoder.layers.{i}"
        for norm in ("self_attn_norm", "cross_attn_norm", "mlp_norm"):
            out[f"{n}.{norm}.weight"] = (h,)
        _attention(out, f"{n}.self_attn", h, c["heads"], kv, hd)
        _attention(out, f"{n}.cross_attn", h, c["heads"], kv, hd)
        _mlp(out, f"{n}.mlp", h, c["inner"])
        out[f"{n}.scale_shift_table"] = (1, 6, h)
    out["decoder.norm_out.weight"] = (h,)
    out["decoder.proj_out.1.weight"], out["decoder.proj_out.1.bias"] = (h, c["acoustic"], c["patch"]), (c["acoustic"],)
    out["decoder.scale_shift_table"] = (1, 2, h)
    # condition encoder
    _linear(out, "encoder.text_projector", e, c["text_dim"], bias=False)
    _stack(out, "encoder.lyric_encoder", c["text_dim"], e, c["lyric_layers"], c["enc_heads"], kv, hd, c["enc_inner"])
    _stack(out, "encoder.timbre_encoder", c["timbre_dim"], e, c["timbre_layers"], c["enc_heads"], kv, hd,
           c["enc_inner"])
    out["encoder.timbre_encoder.special_token"] = (1, 1, e)
    # audio tokenizer: projection, attention pooler (16 heads, 8 kv heads, 3x MLP, fixed), residual FSQ projections
    _linear(out, "tokenizer.audio_acoustic_proj", e, c["acoustic"], bias=True)
    _stack(out, "tokenizer.attention_pooler", e, e, c["tokenizer_layers"], 16, 8, hd, 3 * e)
    out["tokenizer.attention_pooler.special_token"] = (1, 1, e)
    _linear(out, "tokenizer.quantizer.project_in", FSQ_LEVELS, e, bias=True)
    _linear(out, "tokenizer.quantizer.project_out", e, FSQ_LEVELS, bias=True)
    # detokenizer: 2 layers, same fixed heads
    _stack(out, "detokenizer", e, e, 2, 16, 8, hd, 3 * e)
    out["detokenizer.special_tokens"] = (1, c["pool"], e)
    _linear(out, "detokenizer.proj_out", c["acoustic"], e, bias=True)
    out["null_condition_emb"] = (1, 1, e)
    return out


def tiny_comfyui_config(xl: bool = False) -> dict:
    """The ComfyUI config matching `acetune.models.v15.tiny` (decoder 32 or XL 40 wide, condition encoder 32)."""
    from acetune.models.v15.tiny import tiny_condition_encoder_config, tiny_transformer_config

    t, e = tiny_transformer_config(xl=xl), tiny_condition_encoder_config()
    return dict(hidden=t["hidden_size"], inner=t["intermediate_size"], layers=t["num_hidden_layers"],
                heads=t["num_attention_heads"], kv_heads=t["num_key_value_heads"], head_dim=t["head_dim"],
                in_channels=t["in_channels"], acoustic=t["audio_acoustic_hidden_dim"], patch=t["patch_size"],
                enc_hidden=e["hidden_size"], enc_inner=e["intermediate_size"], enc_heads=e["num_attention_heads"],
                text_dim=e["text_hidden_dim"], timbre_dim=e["timbre_hidden_dim"],
                lyric_layers=e["num_lyric_encoder_hidden_layers"], timbre_layers=e["num_timbre_encoder_hidden_layers"],
                tokenizer_layers=2, pool=5)


def save_comfyui_base(path: Path, config: dict, prefix: str = "", dtype=torch.bfloat16, seed: int = 0,
                      extra: dict | None = None) -> Path:
    """A generated "released ComfyUI 1.5 file" (keys under `prefix`, plus `extra` tensors, e.g. a VAE)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {prefix + k: torch.randn(shape, generator=g).to(dtype) for k, shape in comfyui_15_shapes(config).items()}
    state.update(extra or {})
    save_file(state, str(path), metadata={"format": "pt"})
    return path
