"""End-of-run problem report shared by every stage: nothing bad is ever dropped silently.

Usage:

    report = Report("build-dataset")
    report.problem(path, "audio is silent", "remove the file or replace it")  # kept going
    report.count("songs"); report.count("total duration (s)", 12.5)
    report.print_summary()                      # to stderr
    return report.exit_code(strict=args.strict)  # 1 only if strict and there were errors

A problem has a severity: "error" (the file was left out or is unusable) or "warning" (used, but
something was guessed, e.g. two sidecar conventions disagreed). `--strict` fails on errors and
warnings alike.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TextIO

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One file-level problem: what, why, and what the user should do."""

    file: str
    reason: str
    fix: str
    severity: str = ERROR


@dataclass
class Report:
    """Collects problems and counters during a run; prints one summary at the end."""

    stage: str
    problems: list[Problem] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)

    def problem(self, file: str | os.PathLike, reason: str, fix: str, severity: str = ERROR) -> Problem:
        """Record a problem with `file` (kept in order of discovery) and return it."""
        if severity not in (ERROR, WARNING):
            raise ValueError(f"severity must be {ERROR!r} or {WARNING!r}, got {severity!r}")
        p = Problem(os.fspath(file), reason, fix, severity)
        self.problems.append(p)
        return p

    def warning(self, file: str | os.PathLike, reason: str, fix: str) -> Problem:
        return self.problem(file, reason, fix, WARNING)

    def add_error(self, err) -> Problem:
        """Record an `acetune.errors.AcetuneError` (path, reason, fix) as an error."""
        return self.problem(err.path or "", err.reason, err.fix or "", ERROR)

    def count(self, name: str, amount: float = 1) -> None:
        """Add `amount` to counter `name` (counters print in the order first used)."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def set(self, name: str, value: float) -> None:
        self.counters[name] = value

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def exit_code(self, strict: bool = False) -> int:
        """0 normally; 1 under `strict` if anything was reported."""
        return 1 if strict and self.problems else 0

    def format(self) -> str:
        lines = []
        if self.problems:
            lines.append(f"{self.stage}: {len(self.problems)} problem(s) "
                         f"({len(self.errors)} error(s), {len(self.warnings)} warning(s)):")
            for p in self.problems:
                lines.append(f"  [{p.severity}] {p.file}: {p.reason}")
                if p.fix:
                    lines.append(f"      -> {p.fix}")
            by_reason = Counter(p.reason for p in self.problems)
            if len(self.problems) > 10:
                lines.append("  most frequent: " + "; ".join(f"{r} x{n}" for r, n in by_reason.most_common(3)))
        lines.append(f"{self.stage} summary:")
        width = max([len(k) for k in self.counters] + [len("problems")])
        for k, v in self.counters.items():
            lines.append(f"  {k.ljust(width)}  {_fmt(v)}")
        lines.append(f"  {'problems'.ljust(width)}  {len(self.problems)}")
        return "\n".join(lines)

    def print_summary(self, file: TextIO | None = None) -> None:
        print(self.format(), file=file or sys.stderr)

    def to_json(self) -> str:
        return json.dumps({"stage": self.stage, "counters": self.counters,
                           "problems": [asdict(p) for p in self.problems]}, indent=2, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (temp name, then rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"
