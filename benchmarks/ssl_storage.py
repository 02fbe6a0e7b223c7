"""SSL target storage: the schema-1 6-bit directions vs the current encoding (`schema.encode_ssl`).

For each distribution (Gaussian, Laplace, Student-t nu=3, 1-4 fixed channels at 10-100x the rest;
every frame also scaled by its own log-normal factor), at the MERT size (1024 wide, 75 frames/s) and
the mHuBERT size (768, 50 frames/s), 60 s of frames each, prints: the minimum per-frame cosine to the
original, the relative change of the v1 SSL loss (`ssl_projection_loss`) for a well-trained
prediction (target + noise, loss ~0.2), and bits per value on disk.

    python benchmarks/ssl_storage.py [--seconds 60]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

SIZES = {"MERT": (75, 1024), "mHuBERT": (50, 768)}
KINDS = ["gaussian", "laplace", "student-t3", "outliers-1-10", "outliers-1-100", "outliers-4-10", "outliers-4-100"]


def features(kind: str, frames: int, width: int, g: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        x = torch.randn(frames, width, generator=g)
    elif kind == "laplace":
        u = torch.rand(frames, width, generator=g) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    elif kind == "student-t3":
        chi2 = torch.randn(frames, width, 3, generator=g).pow(2).sum(-1)
        x = torch.randn(frames, width, generator=g) / (chi2 / 3).sqrt()
    else:
        _, k, factor = kind.split("-")
        x = torch.randn(frames, width, generator=g)
        channels = torch.randperm(width, generator=g)[: int(k)]
        x[:, channels] *= float(factor) * (0.5 + torch.rand(frames, int(k), generator=g))
    return x * torch.exp(torch.randn(frames, 1, generator=g))


def legacy(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Schema 1: round(31 x / max|x|) per frame, 6 bits per value."""
    return torch.round(x / x.abs().amax(-1, keepdim=True) * 31), 6.0


def current(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    from acetune.dataset import schema

    data, shape = schema.encode_ssl(x)
    return schema.decode_ssl(data, shape), 8 * len(data) / x.numel()


def measure(seconds: int):
    """Yield (kind, size, [(min cosine, loss rel change, bits/value) for legacy, current])."""
    from acetune.models.v1.transformer import ssl_projection_loss

    g = torch.Generator().manual_seed(0)
    for kind in KINDS:
        for size, (rate, width) in SIZES.items():
            x = features(kind, rate * seconds, width, g)
            rms = x.pow(2).mean(-1, keepdim=True).sqrt()
            predicted = (x + 0.75 * rms * torch.randn(x.shape, generator=g))[None]
            exact = ssl_projection_loss(predicted, [x])
            cols = []
            for encode in (legacy, current):
                back, bits = encode(x)
                cos = F.cosine_similarity(back, x, dim=-1).min().item()
                rel = abs(ssl_projection_loss(predicted, [back]) - exact).item() / exact.item()
                cols.append((cos, rel, bits))
            yield kind, size, cols


def rows(quick: bool) -> list[tuple[str, str, float, str]]:
    """Worst case over every distribution, per model size, of the current encoding (benchmarks/run.py)."""
    seconds = 10 if quick else 60
    worst: dict[str, list[float]] = {}
    for _, size, cols in measure(seconds):
        cos, rel, bits = cols[1]
        w = worst.setdefault(size, [1.0, 0.0, 0.0])
        worst[size] = [min(w[0], cos), max(w[1], rel), max(w[2], bits)]
    out = []
    for size, (cos, rel, bits) in worst.items():
        config = f"{size} width, {len(KINDS)} distributions, {seconds} s"
        out += [("SSL storage 1 - min per-frame cosine", config, 1 - cos, "(goal <= 5e-4)"),
                ("SSL storage loss change (max)", config, rel, "relative (goal <= 1e-3)"),
                ("SSL storage size (max)", config, bits, "bits/value")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    print(f"{'features':<15} {'size':<8} {'6-bit min cos':>13} {'loss rel':>9} {'now min cos':>12} {'loss rel':>9} "
          f"{'bits/value':>10}")
    for kind, size, ((c0, r0, _), (c1, r1, b1)) in measure(args.seconds):
        print(f"{kind:<15} {size:<8} {c0:>13.5f} {r0:>9.1e} {c1:>12.5f} {r1:>9.1e} {b1:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
