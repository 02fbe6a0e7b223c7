"""Stage forms generated from each stage's own `Args` dataclass, and form values turned back into argv.

There is no second definition of a flag: the fields, types, defaults, choices and help text shown in
the browser are read from `dataclasses.fields(module.Args)` (the same ones `acetune <stage> --help`
prints), and the values the user submits are checked by `acetune.cli.parse_args` (the CLI's parser
and the Args' own `__post_init__` validation) before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import shlex
import typing
from pathlib import Path

from acetune.cli import COMMANDS, _unwrap_optional, parse_args
from acetune.errors import AcetuneError

STAGES = ("caption", "build-dataset", "preprocess", "train", "export")


class FormError(Exception):
    """Form values the stage's parser refused; the message is its one line."""


def stage_args(stage: str):
    if stage not in STAGES:
        raise FormError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
    return importlib.import_module(COMMANDS[stage][0]).Args


def _kind(tp) -> str:
    tp = _unwrap_optional(tp)
    if tp is bool:
        return "bool"
    if typing.get_origin(tp) in (list, tuple):
        return "list"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is dict:
        return "dict"
    return "str"


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


def form_fields(stage: str) -> list[dict]:
    """One entry per CLI flag of `stage`: name, kind, default, required, choices, help, aliases."""
    cls = stage_args(stage)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = _kind(hints[f.name])
        if not f.init or kind == "dict":
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append({"name": f.name, "kind": kind, "default": _default(f), "required": required,
                    "choices": list(f.metadata.get("choices") or []) or None, "help": f.metadata.get("help", ""),
                    "aliases": list(f.metadata.get("aliases", ()))})
    return out


def _same(value, default, kind: str) -> bool:
    if kind == "list":
        return [str(v) for v in (value or [])] == [str(v) for v in (default or [])]
    if default is None:
        return value in (None, "")
    if kind in ("int", "float"):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    return str(value) == str(default) if kind == "str" else value == default


def to_argv(stage: str, values: dict) -> list[str]:
    """Form values -> the shortest argv that gives them (flags equal to their default are left out)."""
    fields = {f["name"]: f for f in form_fields(stage)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FormError(f"unknown field(s) for {stage}: {', '.join(unknown)}")
    argv: list[str] = []
    for name, f in fields.items():  # in the dataclass order, as --help lists them
        if name not in values:
            continue
        value, kind = values[name], f["kind"]
        if kind == "bool":
            value = value in (True, "true", "on", "1", 1)
            if value != bool(f["default"]):
                argv.append(f"--{name}" if value else f"--no-{name}")
            continue
        if kind == "list":
            items = value if isinstance(value, list) else [line for line in str(value or "").split("\n")]
            items = [str(v).strip() for v in items if str(v).strip()]
            if not _same(items, f["default"], kind):
                argv += [f"--{name}", *items] if items else []
            continue
        if value is None or (str(value).strip() == "" and not f["required"]):
            continue
        if not _same(value, f["default"], kind) or f["required"]:
            argv += [f"--{name}", str(value).strip()]
    return argv


def check_argv(stage: str, argv: list[str]):
    """Parse `argv` exactly as `acetune <stage>` would: its Args, or FormError with the parser's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(stage_args(stage), argv, f"acetune {stage}")
    except AcetuneError as e:
        raise FormError(str(e)) from None
    except SystemExit:  # argparse: a bad number, a missing required flag
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise FormError(lines[-1] if lines else "invalid flags") from None


def command_line(stage: str, argv: list[str]) -> str:
    """The exact command to type (POSIX shell quoting)."""
    return shlex.join(["acetune", stage, *argv])


def suggested_values(stage: str, data_dir: Path, workdir: Path) -> dict:
    """Folder defaults that chain the stages inside the work folder (the user can change any of them)."""
    w = workdir
    table = {
        "caption": {"data_dir": str(data_dir)},
        "build-dataset": {"data_dir": str(data_dir), "output_name": str(w / "dataset")},
        "preprocess": {"input_name": str(w / "dataset"), "output_name": str(w / "prep")},
        "train": {"dataset_path": str(w / "prep"), "output_dir": str(w / "runs" / "acetune_lora")},
        "export": {"output_name": str(w / "exports" / "lora_comfyui.safetensors"), "format": "comfyui",
                   "bake_alpha": True},
    }
    return table.get(stage, {})
