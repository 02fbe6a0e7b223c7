"""Golden case `v1_flow`: schedules, timestep sampling, noising, loss and Euler steps vs ../shared/golden/flow.

Also replays the denoising loss of `v1_train_step_tiny` from its stored model output (no transformer
needed), so the loss formula is checked on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from acetune.models.v1.flow import (
    add_noise,
    euler_step,
    flow_matching_loss,
    inference_schedule,
    omega_rescale,
    timestep_indices_from_u,
    training_schedule,
)
from acetune.parity.registry import Row, golden_case, row_abs, row_exact, row_rel

CASE = "v1_flow"
SCHEDULE_TOL = 1e-6  # float32 tables; diffusers reproduces them bit for bit
STEP_TOL = 1e-5  # elementwise float32 arithmetic; README sampler tolerance is 1e-4
LOSS_TOL = 1e-5  # README: loss scalars abs 1e-5


def _schedule_rows(g: dict, meta: dict) -> list[Row]:
    rows = []
    sigmas, timesteps = training_schedule(meta["shift"])
    rows.append(row_rel(CASE, "train.sigmas", sigmas, g["train.sigmas"], SCHEDULE_TOL))
    rows.append(row_rel(CASE, "train.timesteps", timesteps, g["train.timesteps"], SCHEDULE_TOL))
    for n in meta["inference"]:
        ts, sg = inference_schedule(int(n), meta["shift"])
        rows.append(row_rel(CASE, f"inference_{n}.timesteps", ts, g[f"inference_{n}.timesteps"], SCHEDULE_TOL))
        rows.append(row_rel(CASE, f"inference_{n}.sigmas", sg, g[f"inference_{n}.sigmas"], SCHEDULE_TOL))
    return rows


def _logit_normal_rows(g: dict, meta: dict) -> list[Row]:
    ln = meta["logit_normal"]
    # "torch.manual_seed(0); u = torch.normal(0, 1, (64,))" — the same draw from a private generator.
    u = torch.normal(0.0, 1.0, (len(ln["u"]),), generator=torch.Generator().manual_seed(0))
    idx = timestep_indices_from_u(u)
    sigmas, timesteps = training_schedule(meta["shift"])
    edge_idx = timestep_indices_from_u(torch.tensor(ln["edge_u"], dtype=torch.float32))
    return [
        row_rel(CASE, "logit_normal.u", u, g["logit_normal.u"], 0.0),
        row_exact(CASE, "logit_normal.indices", idx, g["logit_normal.indices"]),
        row_rel(CASE, "logit_normal.timesteps", timesteps[idx], g["logit_normal.timesteps"], SCHEDULE_TOL),
        row_rel(CASE, "logit_normal.sigmas", sigmas[idx], g["logit_normal.sigmas"], SCHEDULE_TOL),
        row_exact(CASE, "logit_normal.edge_indices", edge_idx, torch.tensor(ln["edge_indices"])),
        row_rel(CASE, "logit_normal.edge_timesteps", timesteps[edge_idx],
                torch.tensor(ln["edge_timesteps"], dtype=torch.float32), SCHEDULE_TOL),
    ]


def _euler_rows(g: dict, meta: dict) -> list[Row]:
    e = meta["euler_omega10"]
    rows = [row_abs(CASE, "euler.omega_after_logistic", omega_rescale(e["omega_in"]),
                    e["omega_after_logistic"], 1e-12)]
    _, sigmas = inference_schedule(e["num_inference_steps"], meta["shift"])
    x, v = g["euler_omega10.sample"], g["euler_omega10.model_output"]
    for i in range(e["steps_applied"]):  # the same model output reused for every step
        x = euler_step(x, v, sigmas[i], sigmas[i + 1], omega=e["omega_in"])
        rows.append(row_rel(CASE, f"euler.after_step_{i}", x, g[f"euler_omega10.after_step_{i}"], STEP_TOL))
    return rows


def _train_step_rows(step_dir: Path) -> list[Row]:
    """Noising and loss of the fork's training step, from the stored model output."""
    rows = []
    sigmas_t, timesteps_t = training_schedule()
    for case in ("full", "latent_pad"):
        inp = load_file(step_dir / f"inputs_{case}.safetensors")
        out = load_file(step_dir / f"outputs_{case}.safetensors")
        idx = timestep_indices_from_u(inp["u"])
        rows.append(row_exact(CASE, f"train_step.{case}.timestep_indices", idx, inp["timestep_indices"]))
        rows.append(row_rel(CASE, f"train_step.{case}.timesteps", timesteps_t[idx], inp["timesteps"], SCHEDULE_TOL))
        sigmas = sigmas_t[idx]
        noisy = add_noise(inp["target_latents"], inp["noise"], sigmas)
        rows.append(row_rel(CASE, f"train_step.{case}.noisy_image", noisy, out["noisy_image"], 1e-6))
        proj = [(k.split(".", 1)[1], out[k]) for k in ("proj_loss.mert", "proj_loss.m-hubert")]
        loss = flow_matching_loss(out["model_output"], out["noisy_image"], inp["target_latents"], sigmas,
                                  inp["attention_mask"], proj, ssl_coeff=1.0)
        rows.append(row_abs(CASE, f"train_step.{case}.denoising_loss", loss.denoising_loss,
                            out["denoising_loss"], LOSS_TOL))
        rows.append(row_abs(CASE, f"train_step.{case}.loss", loss.loss, out["loss"], LOSS_TOL))
    return rows


@golden_case(CASE, folder="flow")
def v1_flow(golden: Path) -> list[Row]:
    golden = Path(golden)
    g = load_file(golden / "flow" / "scheduler.safetensors")
    meta = json.loads((golden / "flow" / "scheduler.json").read_text())
    rows = _schedule_rows(g, meta) + _logit_normal_rows(g, meta) + _euler_rows(g, meta)
    step_dir = golden / "v1_train_step_tiny"
    if step_dir.is_dir():  # written by the same generator run; present in every complete golden folder
        rows += _train_step_rows(step_dir)
    return rows
