"""bench/ runs against the installed package (`pip install -e .`): it edits no sys.path and imports nothing from
tests/ (a bench script's own folder is on sys.path, so bench modules may import each other)."""
import ast

from conftest import ROOT


def test_bench_scripts_import_the_installed_package_only():
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests"}
    scripts = sorted((ROOT / "bench").glob("*.py"))
    offences = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offences.append(f"bench/{path.name}:{node.lineno}: sys.path")
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offences += [f"bench/{path.name}:{node.lineno}: imports {name} from tests/" for name in names
                         if name.split(".")[0] in test_modules]
    assert scripts, "no bench/*.py found"
    assert offences == []
