"""bench/ runs against the installed package (`pip install -e .`): it edits no sys.path and imports nothing
from tests/ (a bench script's own folder is on sys.path, so bench modules may import each other)."""
import ast

from conftest import ROOT


def imported_modules(node) -> list:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names] if isinstance(node, ast.Import) else []


def test_bench_scripts_import_the_installed_package_only():
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests"}
    scripts = sorted((ROOT / "bench").glob("*.py"))
    offences = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"bench/{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
                offences.append(f"{where}: sys.path")
            offences += [f"{where}: imports {name} from tests/" for name in imported_modules(node)
                         if name.split(".")[0] in test_modules]
    assert scripts, "no bench/*.py found"
    assert offences == []
