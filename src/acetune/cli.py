"""`acetune <command>`: a table from command names to stage modules.

Each stage module defines an `Args` dataclass (fields declared with `arg(...)`, whose help text
becomes `--help`) and `run(args)`. Flags are `--field_name` (the spelling the fork's users type),
with `--field-name` and any listed aliases accepted too. Every command takes `--config FILE`
(JSON or YAML with field names as keys); flags on the command line override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from acetune.errors import AcetuneError, UsageError, from_os_error
from acetune.progress import silence_library_bars

# name -> (module, one-line summary). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {  # in pipeline order (the order `acetune` lists them)
    "download": ("acetune.stages.download", "fetch model sets from the Hugging Face Hub by short name, then check them"),
    "caption": ("acetune.stages.caption", "write tag prompts, lyrics, BPM and key next to each song"),
    "build-dataset": ("acetune.stages.build_dataset", "scan an audio folder and its sidecars into a dataset"),
    "preprocess": ("acetune.stages.preprocess", "encode the song dataset once into latents and embeddings for training"),
    "train": ("acetune.stages.train", "train a LoRA on the transformer from a preprocessed dataset"),
    "export": ("acetune.stages.export", "bake alpha, convert to ComfyUI keys, SVD-resize or merge a LoRA"),
    "generate": ("acetune.stages.generate", "render a song from a prompt, lyrics and LoRAs to 48 kHz audio"),
    "evaluate": ("acetune.stages.evaluate", "score checkpoints (validation loss, CLAP), plot, recommend a checkpoint"),
    "studio": ("acetune.stages.studio", "open the local web app: review and edit songs, run the stages, watch training"),
    "demo": ("acetune.stages.demo", "run the whole pipeline on a tiny generated model and songs (offline, minutes)"),
    "doctor": ("acetune.stages.doctor", "check a checkpoint folder (files, configs, keys, shapes, dtype, disk, GPU)"),
    "selftest": ("acetune.stages.selftest", "check this implementation against golden reference vectors"),
}


def arg(default=dataclasses.MISSING, *, help: str, aliases: Sequence[str] = (), choices=None,
        default_factory=dataclasses.MISSING, metavar: str | None = None, positional: bool = False,
        switch: tuple[str, str] | None = None):
    """A dataclass field that is also a CLI flag. `help` is shown by `--help`.

    `positional`: a list field taking the words after the command (`acetune download v1 mert`).
    `switch` (on, off): a text flag that also works as the switch it once was: `--NAME` alone gives
    on, `--no-NAME` off, and a config file's true/false maps to on/off."""
    meta = {"help": help, "aliases": tuple(aliases), "choices": choices, "metavar": metavar,
            "positional": positional, "switch": switch}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


class _ExtendList(argparse.Action):
    """`--lora a --lora b c` gives [a, b, c]. The first occurrence replaces the default (a value from
    `--config` is a default too); argparse's own "extend" would append to a non-empty default."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        # argparse starts the namespace with `self.default` itself; we always store a new list, so
        # the value is still that object until this flag's first occurrence.
        if current is self.default or current is None:
            setattr(namespace, self.dest, list(values))
        else:
            setattr(namespace, self.dest, [*current, *values])


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp) -> None:
    meta = f.metadata
    if meta.get("positional"):
        parser.add_argument(f.name, nargs="*", default=f.default_factory(), help=meta.get("help", ""),
                            metavar=meta.get("metavar") or f.name.upper())
        return
    names = [f"--{f.name}"]
    if "_" in f.name:
        names.append(f"--{f.name.replace('_', '-')}")
    names += [a for a in meta.get("aliases", ()) if a not in names]
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    help_text = meta.get("help", "")
    if not required and default not in (None, "", [], ()):
        help_text += f" (default: {default})"
    kw = dict(dest=f.name, help=help_text, required=required)
    tp = _unwrap_optional(tp)
    if tp is bool:
        parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text, dest=f.name)
        return
    if typing.get_origin(tp) in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        kw.update(nargs="+", type=_unwrap_optional(inner), action=_ExtendList)
    elif tp in (int, float, str):
        kw["type"] = tp
    elif tp is Path:
        kw["type"] = Path
    else:
        kw["type"] = str
    if meta.get("choices") is not None:
        kw["choices"] = meta["choices"]
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if meta.get("switch"):
        on, off = meta["switch"]
        kw.update(nargs="?", const=on, type=lambda v: {"true": on, "false": off}.get(v.lower(), v.lower()))
        parser.add_argument(*[f"--no-{n[2:]}" for n in names if n.startswith("--")], dest=f.name,
                            action="store_const", const=off, default=default, help=f"same as --{f.name} {off}")
    parser.add_argument(*names, default=default, **kw)


def _load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError("config file not found", path=p, fix="pass an existing .json or .yaml file to --config")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"config file is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                         path=p, fix="save it as UTF-8 (any editor's \"Save as ... UTF-8\")") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # any parse error is the user's file
        raise UsageError(f"cannot parse config file ({e.__class__.__name__}: {e})", path=p,
                         fix="fix the syntax or pass another file") from None
    if not isinstance(data, dict):
        raise UsageError("config file must hold a mapping of flag names to values", path=p)
    return data


def _config_value_ok(tp, value) -> bool:
    tp = _unwrap_optional(tp)
    if value is None:
        return True  # the field's own checks decide whether None is allowed
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (str, Path):
        return isinstance(value, str)
    if typing.get_origin(tp) in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return isinstance(value, list) and all(_config_value_ok(inner, v) for v in value)
    return True


def _check_config_types(args_cls, data: dict, path: str) -> None:
    """A config value of the wrong type (`"max_steps": [1, 2]`) is one line naming the key, not a traceback."""
    hints = typing.get_type_hints(args_cls)
    for f in dataclasses.fields(args_cls):
        if f.name not in data or not f.init:
            continue
        tp, value = _unwrap_optional(hints[f.name]), data[f.name]
        if f.metadata.get("switch") and str(value).lower() in ("true", "false"):  # an old config's true/false
            data[f.name] = value = f.metadata["switch"][0 if str(value).lower() == "true" else 1]
        if tp in (int, float) and isinstance(value, str):  # YAML reads 1e-4 as text; the command line would parse it
            try:
                data[f.name] = value = tp(value)
            except ValueError:
                pass
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise UsageError(f"config value {f.name!r} is {value!r}, not one of {', '.join(map(str, choices))}",
                             path=path, fix="fix it in the file")
        if not _config_value_ok(hints[f.name], value):
            tp = _unwrap_optional(hints[f.name])
            wanted = getattr(tp, "__name__", str(tp)).replace("str", "text").replace("Path", "a path")
            raise UsageError(f"config value {f.name!r} must be {'a list' if typing.get_origin(tp) else wanted}, "
                             f"not {type(data[f.name]).__name__} {json.dumps(data[f.name])[:40]}", path=path,
                             fix=f"fix it in the file (`--{f.name}` on the command line overrides it)")


def build_parser(args_cls, prog: str, description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON/YAML file of flag values (field names as keys); command-line flags override it")
    hints = typing.get_type_hints(args_cls)
    for f in dataclasses.fields(args_cls):
        if f.init:
            _add_field(parser, f, hints[f.name])
    return parser


def parse_args(args_cls, argv: Sequence[str], prog: str, description: str | None = None, epilog: str | None = None):
    """Parse `argv` into an `args_cls` instance, applying `--config` first and flags over it."""
    parser = build_parser(args_cls, prog, description, epilog)
    config_path = None
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif tok.startswith("--config="):
            config_path = tok.split("=", 1)[1]
    if config_path:
        data = _load_config_file(config_path)
        known = {f.name for f in dataclasses.fields(args_cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown keys in config file: {', '.join(unknown)}", path=config_path,
                             fix=f"run `{prog} --help` for the valid names")
        _check_config_types(args_cls, data, config_path)
        parser.set_defaults(**data)
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in data:
                action.required = False
    ns = vars(parser.parse_args(list(argv)))
    ns.pop("config", None)
    args = args_cls(**ns)
    if hasattr(args_cls, "given_flags"):  # the class wants to know which flags the user set (train --recipe)
        args.given_flags = frozenset(_flags_on_command_line(args_cls, argv, prog) | set(data if config_path else ()))
    return args


def _flags_on_command_line(args_cls, argv: Sequence[str], prog: str) -> set[str]:
    """Field names given in `argv` (any spelling or alias): a parse where nothing has a default."""
    parser = build_parser(args_cls, prog, None)
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = parser.parse_known_args(list(argv))
    return set(vars(given)) - {"config"}


_invocation: list[str] = []  # the running command's words, for "run this to continue" advice


def invocation() -> list[str]:
    """The command line that started the running stage, e.g. ["acetune", "train", "--dataset_path", "d"]."""
    return list(_invocation)


def run_command(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command with its flags; turn user errors into one line. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module_name, summary = COMMANDS[name]
    prog = prog or f"acetune {name}"
    _invocation[:] = [*(["python"] if prog.endswith(".py") else []), *prog.split(), *argv]
    try:
        silence_library_bars()
        module = importlib.import_module(module_name)
        description = (module.__doc__ or summary).strip()
        args = parse_args(module.Args, argv, prog, description, getattr(module, "EXAMPLES", None))
        code = module.run(args)
        return int(code or 0)
    except AcetuneError as e:
        if os.environ.get("ACETUNE_DEBUG"):
            raise
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a file-system failure (disk full, read-only, ...) is one line too
        mapped = from_os_error(e)
        if mapped is None or os.environ.get("ACETUNE_DEBUG"):
            raise
        print(f"Error: {mapped}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: finished work was kept; rerun the same command to continue.", file=sys.stderr)
        return 130


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: acetune <command> [flags]   (acetune <command> --help for its flags)", "", "commands:"]
    lines += [f"  {n.ljust(width)}  {s}" for n, (_, s) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from acetune import __version__

        print(f"acetune {__version__}")
        sys.exit(0)
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"Error: unknown command '{argv[0]}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_command(name, argv[1:]))
