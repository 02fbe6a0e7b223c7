"""The README's two set-up commands stay true: CI runs the test command verbatim."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_has_exactly_two_setup_commands():
    demo, tests = readme_commands()
    assert demo.endswith("acetune demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = readme_commands()
    assert tests in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_stage_examples_parse():
    """Every `acetune <stage> ...` example in the README names flags that stage has.

    argparse exits (SystemExit) on an unknown flag; an `AcetuneError` from `__post_init__` only says
    the example's folders do not exist here, which is fine.
    """
    import importlib
    import shlex

    from acetune.cli import COMMANDS, parse_args
    from acetune.errors import AcetuneError

    text = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    examples = re.findall(r"`?(acetune [a-z-]+ --[^`\n]+)", text)
    assert len(examples) >= 6
    for line in examples:
        argv = shlex.split(line)[1:]
        module = importlib.import_module(COMMANDS[argv[0]][0])
        try:
            parse_args(module.Args, argv[1:], prog=f"acetune {argv[0]}")
        except AcetuneError:
            pass
