"""`acetune.cli`: flags from `Args` dataclasses, `--config` files, repeated list flags, one-line errors."""

import json
import sys
import types
from dataclasses import dataclass

import pytest

from acetune import cli
from acetune.cli import arg, parse_args, run_command
from acetune.errors import InputError, UsageError


@dataclass
class FakeArgs:
    input_dir: str = arg(help="input folder")  # required
    lora: list[str] = arg(default_factory=lambda: ["base.safetensors"], help="LoRA files", aliases=("--loras",))
    tags: list[str] | None = arg(None, help="tags")
    steps: int = arg(10, help="steps")
    shuffle: bool = arg(True, help="shuffle the songs")


def parse(*argv):
    return parse_args(FakeArgs, [str(a) for a in argv], prog="acetune fake")


def test_list_flag_repeated_extends():
    assert parse("--input_dir", "x", "--lora", "a", "--lora", "b", "c").lora == ["a", "b", "c"]
    assert parse("--input_dir", "x", "--lora", "a", "b").lora == ["a", "b"]
    assert parse("--input_dir", "x", "--loras", "a", "--lora", "b").lora == ["a", "b"]  # alias, same list
    assert parse("--input_dir", "x", "--tags", "t1", "--tags", "t2").tags == ["t1", "t2"]  # None default


def test_first_occurrence_replaces_default():
    assert parse("--input_dir", "x").lora == ["base.safetensors"]
    assert parse("--input_dir", "x", "--lora", "a").lora == ["a"]
    assert parse("--input_dir", "x").tags is None
    # the default list is not mutated across parses
    assert parse("--input_dir", "x", "--lora", "a", "--lora", "b").lora == ["a", "b"]
    assert parse("--input_dir", "x").lora == ["base.safetensors"]


def test_config_json_then_cli_overrides(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"input_dir": "from_cfg", "steps": 5, "lora": ["c1", "c2"], "shuffle": False}))
    args = parse("--config", cfg)
    assert (args.input_dir, args.steps, args.lora, args.shuffle) == ("from_cfg", 5, ["c1", "c2"], False)
    args = parse("--config", cfg, "--steps", 7, "--input_dir", "cli", "--shuffle")
    assert (args.input_dir, args.steps, args.lora, args.shuffle) == ("cli", 7, ["c1", "c2"], True)
    # a list from the file is a default: the command line replaces it, then repeats extend
    assert parse("--config", cfg, "--lora", "x", "--lora", "y").lora == ["x", "y"]
    assert parse(f"--config={cfg}", "--lora", "x").lora == ["x"]


def test_unknown_config_key_is_a_usage_error(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"input_dir": "x", "bogus": 1, "also_bad": 2}))
    with pytest.raises(UsageError, match="unknown keys in config file: also_bad, bogus"):
        parse("--config", cfg)
    with pytest.raises(UsageError, match="config file not found"):
        parse("--config", tmp_path / "missing.json")


def test_bool_flags():
    assert parse("--input_dir", "x").shuffle is True
    assert parse("--input_dir", "x", "--no-shuffle").shuffle is False
    assert parse("--input_dir", "x", "--no-shuffle", "--shuffle").shuffle is True


def test_dashed_alias_and_required(capsys):
    assert parse("--input-dir", "x").input_dir == "x"
    with pytest.raises(SystemExit):
        parse("--steps", "3")  # --input_dir is required
    assert "--input_dir" in capsys.readouterr().err


@pytest.fixture
def fake_stage(monkeypatch):
    """A stage module `acetune fake` whose run() raises InputError when --input_dir is 'bad'."""
    module = types.ModuleType("acetune_test_fake_stage")
    module.__doc__ = "A fake stage for CLI tests."
    module.Args = FakeArgs
    module.seen = []

    def run(args):
        module.seen.append(args)
        if args.input_dir == "bad":
            raise InputError("no songs here", path="bad", fix="pass a folder of audio files")
        return 0

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", (module.__name__, "fake stage"))
    monkeypatch.delenv("ACETUNE_DEBUG", raising=False)
    return module


def test_stage_error_is_one_line_exit_1(fake_stage, capsys):
    assert run_command("fake", ["--input_dir", "ok", "--lora", "a", "--lora", "b"]) == 0
    assert fake_stage.seen[-1].lora == ["a", "b"]
    capsys.readouterr()
    assert run_command("fake", ["--input_dir", "bad"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "Error: bad: no songs here — pass a folder of audio files", err


def test_config_error_is_one_line_exit_1(fake_stage, tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"bogus": 1}))
    capsys.readouterr()
    assert run_command("fake", ["--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "\n" not in err and "bogus" in err, err
    assert not fake_stage.seen
