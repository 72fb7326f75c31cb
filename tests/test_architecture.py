"""The package's shape is enforced: layers and no import cycles (import-linter contracts in setup.cfg), medgpt's own
imports at the top of every module, and the tree mirrors the config groups."""
import ast
import sys
import subprocess

import pytest

from conftest import ROOT

PACKAGE = ROOT / "medgpt"


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    lint = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    done = subprocess.run([*lint, "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "broken" in done.stdout and " 0 broken" in done.stdout


def test_medgpt_imports_sit_at_the_top_of_each_module():
    """A function-level `from medgpt... import` hides a dependency from readers (and from the layer contract's
    reviewers); only heavy third-party libraries are imported lazily."""
    buried = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("medgpt") or \
                            isinstance(inner, ast.Import) and any(a.name.startswith("medgpt") for a in inner.names):
                        buried.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    allowed = {"medgpt/cli.py"}  # the console command imports a subcommand's module only when it runs
    assert [b for b in buried if b.split(":")[0] not in allowed] == []
