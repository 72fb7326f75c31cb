"""The docs' command lines name real commands: every `medgpt <command>` in README.md and docs/*.md is a
subcommand of the console command (medgpt/cli.py), and README's Commands table lists each one."""
import re

from conftest import ROOT
from medgpt.cli import COMMANDS

SUBCOMMANDS = {"data": "inspect", "eval": "compare"}  # commands whose first argument is their own subcommand


def code_lines(text: str):
    """Lines of fenced (```) and indented code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            yield line


def test_documented_commands_exist():
    wrong, checked = [], 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in code_lines(path.read_text(encoding="utf-8")):
            for command, argument in re.findall(r"(?:^|\s)medgpt ([a-z][\w-]*) ?(\S*)", line.split("#")[0]):
                checked += 1
                if command not in COMMANDS or argument != SUBCOMMANDS.get(command, argument):
                    wrong.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert checked > 20 and wrong == []


def test_readme_lists_every_command():
    table = re.findall(r"^\| `medgpt ([a-z]+)", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    assert table == list(COMMANDS)
