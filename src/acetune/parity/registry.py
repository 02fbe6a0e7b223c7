"""Case registry and comparison rows for `acetune selftest` (metrics: ../shared/golden/README.md)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Modules that register cases; each issue adds its own.
CASE_MODULES: list[str] = [
    "acetune.parity.flow",
    "acetune.parity.transformer",
    "acetune.parity.sampler",
    "acetune.parity.audio",
    "acetune.parity.codec",
    "acetune.parity.lyrics",
    "acetune.parity.train_step",
]


@dataclass
class Row:
    """One compared tensor: `metric` is rel_l2, abs or exact; `passed` is value <= tolerance."""

    case: str
    tensor: str
    metric: str
    value: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.value == self.value and self.value <= self.tolerance  # NaN never passes


@dataclass
class Case:
    name: str
    folder: str  # sub-folder of the golden dir this case needs
    fn: Callable[[Path], list[Row]]
    slow: bool = False

    def available(self, golden: Path) -> bool:
        return (Path(golden) / self.folder).is_dir()


CASES: dict[str, Case] = {}


def golden_case(name: str, folder: str, slow: bool = False):
    """Register `fn(golden_dir) -> list[Row]` as golden case `name`."""

    def deco(fn):
        CASES[name] = Case(name, folder, fn, slow)
        return fn

    return deco


def load_case_modules() -> dict[str, Case]:
    for mod in CASE_MODULES:
        importlib.import_module(mod)
    return CASES


def run_case(name: str, golden: Path) -> list[Row]:
    load_case_modules()
    return CASES[name].fn(Path(golden))


# ---- metrics (float64, as the golden README defines them) ----

def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖₂ / ‖ref‖₂ over the whole tensor, in float64 (0 when both are zero)."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    if out.shape != ref.shape:
        return float("inf")
    num = torch.linalg.vector_norm(out - ref).item()
    den = torch.linalg.vector_norm(ref).item()
    return num / den if den > 0 else num


def row_rel(case: str, name: str, out, ref, tol: float) -> Row:
    return Row(case, name, "rel_l2", rel_l2(torch.as_tensor(out), torch.as_tensor(ref)), tol)


def row_abs(case: str, name: str, out, ref, tol: float) -> Row:
    out = torch.as_tensor(out).detach().double().cpu()
    ref = torch.as_tensor(ref).detach().double().cpu()
    value = (out - ref).abs().max().item() if out.shape == ref.shape else float("inf")
    return Row(case, name, "abs", value, tol)


def row_exact(case: str, name: str, out, ref) -> Row:
    """Count of differing elements (0 passes); a shape mismatch counts as inf."""
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)
    value = float((out != ref).sum().item()) if out.shape == ref.shape else float("inf")
    return Row(case, name, "exact", value, 0.0)


def row_norm(case: str, name: str, tensor, tol: float) -> Row:
    """‖tensor‖₂ <= tol (for quantities that are analytically zero)."""
    return Row(case, name, "norm", torch.linalg.vector_norm(torch.as_tensor(tensor).double()).item(), tol)
