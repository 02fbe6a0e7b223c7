"""Golden case `v1_train_step`: one fork-style LoRA training step on the tiny model (`v1_train_step_tiny`).

The tiny transformer gets det_init weights, the golden `lora_config.json` adapter (r 4, rsLoRA,
scale 0.5) with A/B from `lora_weights.safetensors`, every Dropout at 0, train mode with gradient
checkpointing (golden README "Training step facts"). The step runs through the trainer's own path
(`training.lora.add_lora`, `V1Family.training_loss`) with the golden noise and logit-normal draw u.

Tolerances (README): loss terms abs 1e-5; noisy input and model output rel 1e-5; every LoRA
gradient rel 1e-4; timestep indices exact; the saved LoRA file's keys and values exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from acetune.models.v1.family import FAMILY
from acetune.models.v1.flow import add_noise, timestep_indices_from_u
from acetune.models.v1.loading import config_kwargs
from acetune.models.v1.transformer import ACEStepTransformer2DModel, build_transformer
from acetune.parity.det_init import det_init_
from acetune.parity.registry import Row, golden_case, row_abs, row_exact, row_rel

LOSS_TOL = 1e-5
TENSOR_TOL = 1e-5
GRAD_TOL = 1e-4
CASES = ("full", "latent_pad")


def golden_batch(inputs: dict[str, torch.Tensor]) -> dict:
    """The golden step inputs (the fork's batch names) as a trainer batch (`training.data` keys)."""
    def per_sample(prefix: str) -> list[torch.Tensor]:
        keys = sorted((k for k in inputs if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
        return [inputs[k] for k in keys]

    return {
        "target_latents": inputs["target_latents"],
        "attention_mask": inputs["attention_mask"],
        "encoder_text_hidden_states": inputs["encoder_text_hidden_states"],
        "text_attention_mask": inputs["text_attention_mask"],
        "speaker_embeds": inputs["speaker_embds"],
        "lyric_token_idx": inputs["lyric_token_ids"],
        "lyric_mask": inputs["lyric_mask"],
        "ssl_hidden_states": [per_sample("mert_ssl_hidden_states"), per_sample("mhubert_ssl_hidden_states")],
    }


def build_step_model(golden: Path):
    """(tiny model with the golden LoRA loaded, LoraSetup), ready for a train-mode step."""
    from acetune.training.lora import add_lora

    tiny = Path(golden) / "v1_transformer_tiny"
    folder = Path(golden) / "v1_train_step_tiny"
    config = json.loads((tiny / "config.json").read_text())
    model = build_transformer(config_kwargs(ACEStepTransformer2DModel, config, tiny / "config.json"), device="cpu")
    det_init_(model)
    meta = json.loads((folder / "meta.json").read_text())
    lora_config = json.loads((folder / "lora_config.json").read_text())
    setup = add_lora(model, lora_config, adapter_name=meta["adapter_name"])
    setup.load_lora_state(model, load_file(str(folder / "lora_weights.safetensors")))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    model.enable_gradient_checkpointing()
    return model, setup


def step_rows(case: str, model, setup, inputs: dict, outputs: dict, meta_case: dict) -> list[Row]:
    """Run one step on `inputs`; compare loss terms, tensors and LoRA gradients with `outputs`."""
    model.zero_grad(set_to_none=True)
    model.capture = {}
    try:
        loss = FAMILY.training_loss(model, golden_batch(inputs), shift=3.0, ssl_coeff=1.0,
                                    noise=inputs["noise"], u=inputs["u"])
        sample = model.capture["final_layer.out"]
    finally:
        model.capture = None
    loss.loss.backward()
    indices = timestep_indices_from_u(inputs["u"])
    rows = [
        row_exact(case, "timestep_indices", indices, torch.tensor(meta_case["timestep_indices"])),
        row_abs(case, "loss", loss.loss, outputs["loss"], LOSS_TOL),
        row_abs(case, "denoising_loss", loss.denoising_loss, outputs["denoising_loss"], LOSS_TOL),
        row_rel(case, "noisy_image", add_noise(inputs["target_latents"], inputs["noise"], inputs["sigmas"]),
                outputs["noisy_image"], TENSOR_TOL),
        row_rel(case, "model_output", sample, outputs["model_output"], TENSOR_TOL),
    ]
    for name, value in loss.proj_losses.items():
        rows.append(row_abs(case, f"proj_loss.{name}", value, outputs[f"proj_loss.{name}"], LOSS_TOL))
    params = dict(model.named_parameters())
    for key, ref in outputs.items():
        if not key.startswith("grad."):
            continue
        module, kind, _ = key[len("grad."):].rsplit(".", 2)  # "<module>.lora_A.weight"
        grad = params[f"{module}.{kind}.{setup.adapter_name}.weight"].grad
        rows.append(row_rel(case, key, torch.zeros_like(ref) if grad is None else grad, ref, GRAD_TOL))
    return rows


@golden_case("v1_train_step", folder="v1_train_step_tiny")
def train_step_case(golden: Path) -> list[Row]:
    """Both golden cases (`full`, `latent_pad`) plus the saved-LoRA layout."""
    folder = Path(golden) / "v1_train_step_tiny"
    meta = json.loads((folder / "meta.json").read_text())
    model, setup = build_step_model(golden)
    rows = []
    saved = load_file(str(folder / "lora_saved.safetensors"))
    ours = setup.lora_state(model)
    rows.append(row_exact("v1_train_step:saved", "saved keys", torch.tensor(sorted(ours) == sorted(saved)),
                          torch.tensor(True)))
    for key, ref in saved.items():
        rows.append(row_rel("v1_train_step:saved", key, ours.get(key, torch.full_like(ref, float("nan"))), ref, 0.0))
    for name in CASES:
        rows += step_rows(f"v1_train_step:{name}", model, setup, load_file(str(folder / f"inputs_{name}.safetensors")),
                          load_file(str(folder / f"outputs_{name}.safetensors")), meta["cases"][name])
    return rows
