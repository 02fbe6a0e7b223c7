"""The evaluation report: a markdown table, PNG plots, a recommended checkpoint, a strength-saturation point.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display), from the run's
`metrics.jsonl`; without matplotlib (it comes with the `train` extra) no PNG is written and the report
says so. Everything here is a pure function of numbers already measured.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from acetune.training.loggers import read_metrics

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
SATURATION = 0.9  # the effect saturates at the first strength reaching this fraction of the largest gain
PROMPT_TOLERANCE = 0.05  # a checkpoint may lose this much prompt adherence against the base model


@dataclass
class Row:
    """One scored LoRA (a checkpoint step, a file, or a strength)."""

    label: str
    step: int | None = None
    strength: float = 1.0
    val_loss: float | None = None
    prompt: float | None = None
    style: float | None = None
    frechet: float | None = None
    extra: dict = field(default_factory=dict)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"


def markdown_table(rows: list[Row], base: Row | None) -> str:
    """Markdown table of the rows; Δ style is each row's style match minus the base model's."""
    head = "| LoRA | step | strength | val loss | prompt adherence | style match | Δ style vs no LoRA | Fréchet |"
    lines = [head, "|" + "---|" * 8]
    for r in ([base] if base else []) + rows:
        delta = (r.style - base.style) if base and r is not base and r.style is not None else None
        lines.append(f"| {r.label} | {'' if r.step is None else r.step} | {r.strength:g} | {_fmt(r.val_loss, 6)} | "
                     f"{_fmt(r.prompt)} | {_fmt(r.style)} | {'' if delta is None else f'{delta:+.4f}'} | "
                     f"{_fmt(r.frechet, 3)} |")
    return "\n".join(lines)


def recommend(rows: list[Row], base: Row | None, best_step: int | None) -> tuple[Row | None, str]:
    """The checkpoint to keep and why: the best validation loss when it was measured; otherwise the largest
    style match among rows that keep prompt adherence within `PROMPT_TOLERANCE` of the base model."""
    if best_step is not None:
        for r in rows:
            if r.step == best_step:
                return r, "lowest validation loss on the held-out songs"
    floor = (base.prompt - PROMPT_TOLERANCE) if base and base.prompt is not None else -math.inf
    scored = [r for r in rows if r.style is not None and (r.prompt is None or r.prompt >= floor)]
    if not scored:
        return None, "no checkpoint could be scored"
    pick = max(scored, key=lambda r: r.style)
    return pick, "highest style match that keeps prompt adherence (no validation loss was measured)"


def saturation(sweep: list[Row], base: Row | None) -> Row | None:
    """The first strength whose style gain over the base reaches `SATURATION` of the largest gain."""
    if not sweep or base is None or base.style is None:
        return None
    gains = [(r, r.style - base.style) for r in sorted(sweep, key=lambda r: r.strength) if r.style is not None]
    top = max((g for _, g in gains), default=0.0)
    if top <= 0:
        return None
    return next(r for r, g in gains if g >= SATURATION * top)


# ---- plots ----

def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    pairs = {}
    for r in records:  # a later record of a step wins (an evaluation rerun)
        if isinstance(r.get(name), (int, float)):
            pairs[r["step"]] = float(r[name])
    steps = sorted(pairs)
    return steps, [pairs[s] for s in steps]


def plot_training(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """`loss.png` (training loss and held-out validation loss per step) and, when the run was evaluated,
    `scores.png` (CLAP scores per step), under `out_dir` (default `<run_dir>/plots`). [] without data or
    matplotlib."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / PLOTS_DIR
    records = read_metrics(run_dir)
    written = []
    fig = _figure() if records else None
    if fig is None:
        return written
    ax = fig.add_subplot()
    for name, style in (("train/loss", dict(alpha=0.35, lw=1)), ("val/loss", dict(marker="o", lw=2))):
        steps, values = _series(records, name)
        if steps:
            ax.plot(steps, values, label=name, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training loss and held-out validation loss")
    ax.legend()
    written.append(_save(fig, out_dir / "loss.png"))
    names = [n for n in ("val/clap_prompt", "val/style_cos") if _series(records, n)[0]]
    if names:
        fig = _figure()
        ax = fig.add_subplot()
        for name in names:
            ax.plot(*_series(records, name), marker="o", label=name)
        ax.set_xlabel("step (0 = no LoRA)")
        ax.set_ylabel("CLAP cosine")
        ax.set_title("prompt adherence and style match per checkpoint")
        ax.legend()
        written.append(_save(fig, out_dir / "scores.png"))
    return written


def plot_strengths(sweep: list[Row], base: Row | None, path: Path) -> Path | None:
    """Style match and prompt adherence against LoRA strength (strength 0 = the base model)."""
    fig = _figure()
    if fig is None or not sweep:
        return None
    rows = ([Row("no LoRA", strength=0.0, prompt=base.prompt, style=base.style)] if base else []) + sorted(
        sweep, key=lambda r: r.strength)
    ax = fig.add_subplot()
    for attr, label in (("style", "style match"), ("prompt", "prompt adherence")):
        ax.plot([r.strength for r in rows], [getattr(r, attr) for r in rows], marker="o", label=label)
    ax.set_xlabel("LoRA strength")
    ax.set_ylabel("CLAP cosine")
    ax.set_title("strength sweep")
    ax.legend()
    return _save(fig, path)
