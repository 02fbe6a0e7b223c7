"""Golden cases for the ACE-Step v1 transformer (`v1_transformer_tiny`, slow `v1_transformer_full`).

Tolerances are the golden README's: rel L2 1e-5 for tensors in fp32, abs 1e-5 for the projection
losses, 1e-4 per full-parameter gradient (rel 1e-6 for the ~1e2 probe loss), and ‖g‖ < 1e-5 for the
analytically-zero Conformer `linear_k.bias` gradients.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from acetune.models.v1.loading import config_kwargs, load_weights
from acetune.models.v1.transformer import ACEStepTransformer2DModel, build_transformer
from acetune.parity.det_init import det_init_
from acetune.parity.registry import Row, golden_case, row_abs, row_norm, row_rel

TOL = 1e-5
GRAD_TOL = 1e-4
ZERO_GRAD = re.compile(r"lyric_encoder\.encoders\.\d+\.self_attn\.linear_k\.bias$")


def load_inputs(path: Path) -> dict:
    """Golden inputs as forward kwargs; `ssl_hidden_states.<source>.<sample>` become nested lists."""
    raw = load_file(str(path))
    ssl: dict[int, dict[int, torch.Tensor]] = {}
    out = {}
    for key, value in raw.items():
        if key.startswith("ssl_hidden_states."):
            _, src, item = key.split(".")
            ssl.setdefault(int(src), {})[int(item)] = value
        else:
            out[key] = value
    if ssl:
        out["ssl_hidden_states"] = [[items[i] for i in sorted(items)] for _, items in sorted(ssl.items())]
    return out


def tiny_model(folder: Path, dtype: torch.dtype = torch.float32) -> ACEStepTransformer2DModel:
    """The tiny golden model: its config.json plus weights.safetensors, through the real loader."""
    config = json.loads((folder / "config.json").read_text())
    model = build_transformer(config_kwargs(ACEStepTransformer2DModel, config, folder / "config.json"))
    load_weights(model, [folder / "weights.safetensors"], dtype=dtype)
    return model.eval()


def run_forward(model, inputs: dict, capture: bool = True, dtype: torch.dtype | None = None):
    """Forward the golden inputs; returns {name: tensor} named like the golden outputs."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    # With `dtype`, every float input but the timestep is cast (the golden's bf16 check keeps the
    # timestep in fp32: a bf16 timestep such as 964.29 -> 964 moves the sinusoid far more than bf16 noise).
    kw = {k: (v if k == "timestep" else cast(v) if isinstance(v, torch.Tensor) else [[cast(t) for t in s] for s in v])
          for k, v in inputs.items()}
    model.capture = {} if capture else None
    try:
        states, mask = model.encode(kw["encoder_text_hidden_states"], kw["text_attention_mask"], kw["speaker_embeds"],
                                    kw["lyric_token_idx"], kw["lyric_mask"])
        out = model.decode(kw["hidden_states"], kw["attention_mask"], states, mask, kw["timestep"],
                           kw.get("ssl_hidden_states"), output_length=kw["hidden_states"].shape[-1])
        result = {"sample": out.sample, "encoder_hidden_states": states, "encoder_hidden_mask": mask}
        result.update({f"proj_loss.{name}": value for name, value in out.proj_losses})
        result.update({f"intermediate.{k}": v for k, v in (model.capture or {}).items()})
    finally:
        model.capture = None
    return result


def compare_outputs(case: str, ours: dict, ref: dict, tol: float = TOL, loss_tol: float = TOL) -> list[Row]:
    rows = []
    for name, value in ref.items():
        got = ours.get(name, torch.full_like(value, float("nan")))
        if name.startswith("proj_loss."):
            rows.append(row_abs(case, name, got, value, loss_tol))
        else:
            rows.append(row_rel(case, name, got, value, tol))
    return rows


def gradient_rows(case: str, model: ACEStepTransformer2DModel, inputs: dict, grads: dict) -> list[Row]:
    """Full-parameter gradients of Σ sample·R + Σ proj_losses (train mode, dropout 0) vs grads.safetensors."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = (out.sample * grads["probe_weights_R"]).sum() + sum(v for _, v in out.proj_losses)
    loss.backward()
    rows = [Row(case, "probe_loss", "rel", abs(loss.item() - grads["probe_loss"].item()) / abs(grads["probe_loss"].item()),
                1e-6)]
    params = dict(model.named_parameters())
    for key, ref in grads.items():
        if not key.startswith("grad."):
            continue
        name = key[len("grad."):]
        grad = params[name].grad if name in params else None
        grad = torch.zeros_like(ref) if grad is None else grad
        rows.append(row_norm(case, key, grad, TOL) if ZERO_GRAD.search(name) else row_rel(case, key, grad, ref, GRAD_TOL))
    model.eval()
    model.zero_grad(set_to_none=True)
    return rows


@golden_case("v1_transformer_tiny", folder="v1_transformer_tiny")
def tiny_case(golden: Path) -> list[Row]:
    """Tiny model: det_init == stored weights, every output and intermediate, latent padding, gradients."""
    folder = Path(golden) / "v1_transformer_tiny"
    case = "v1_transformer_tiny"
    model = tiny_model(folder)
    stored = load_file(str(folder / "weights.safetensors"))
    fresh = build_transformer(config_kwargs(ACEStepTransformer2DModel, json.loads((folder / "config.json").read_text())))
    det_init_(fresh)
    det = dict(fresh.named_parameters())
    worst = max(row_rel(case, k, det[k], v, 0.0).value for k, v in stored.items())
    rows = [Row(case, "det_init vs weights.safetensors (worst)", "rel_l2", worst, 0.0)]
    with torch.no_grad():
        rows += compare_outputs(case, run_forward(model, load_inputs(folder / "inputs.safetensors")),
                                load_file(str(folder / "outputs.safetensors")))
        pad = run_forward(model, load_inputs(folder / "inputs_latent_pad.safetensors"), capture=False)
        rows += compare_outputs(f"{case}:latent_pad", pad, load_file(str(folder / "outputs_latent_pad.safetensors")))
    grads = load_file(str(folder / "grads.safetensors"))
    rows += gradient_rows(f"{case}:grads", model, load_inputs(folder / "inputs.safetensors"), grads)
    return rows


@golden_case("v1_transformer_full", folder="v1_transformer_full", slow=True)
def full_case(golden: Path) -> list[Row]:
    """Official-size model with det_init weights (~14 GB RAM in fp32), N=1, 8 frames."""
    folder = Path(golden) / "v1_transformer_full"
    meta = json.loads((folder / "meta.json").read_text())
    model = build_transformer(config_kwargs(ACEStepTransformer2DModel, meta["config"], folder / "meta.json"))
    det_init_(model)
    model.eval()
    with torch.no_grad():
        ours = run_forward(model, load_inputs(folder / "inputs.safetensors"))
    return compare_outputs("v1_transformer_full", ours, load_file(str(folder / "outputs.safetensors")))
