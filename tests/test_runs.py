"""medgpt.runs owns the run folder: no other module spells its file or folder names, and a real run leaves exactly
the layout runs.py declares."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, train_in_process
from medgpt import runs

PACKAGE = ROOT / "medgpt"
NOT_NAMES = {"EXTENDED_VOCAB"}  # a key inside RUN_INFO, not a name on disk
PATH_CALLS = {"Path", "PurePath", "joinpath", "join", "endswith", "startswith", "with_name"}


def declared_names() -> set:
    """Every file or folder name runs.py declares: its upper-case string constants and the strings in its
    upper-case tuples and sets."""
    names = set()
    for attribute, value in vars(runs).items():
        if not attribute.isupper() or attribute in NOT_NAMES:
            continue
        if isinstance(value, str):
            names.add(value)
        elif isinstance(value, (tuple, frozenset, set)):
            names |= {v for v in value if isinstance(v, str)}
    return names


def is_file_name(name: str) -> bool:
    return Path(name).suffix != ""


def builds_a_path(node: ast.AST, parent: ast.AST) -> bool:
    """`folder / "name"`, or "name" given to Path(), joinpath(), os.path.join(), endswith(), startswith()."""
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        return name in PATH_CALLS
    return False


def spelled_names(path: Path, names: set, root: Path = ROOT) -> list:
    """file:line of each run-folder name spelled out in this module: a file name (metrics.json) anywhere, a folder
    name (final, checkpoints) where it builds or tests a path (not `logger == "tensorboard"`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = [node for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
             and (is_file_name(node.value) or builds_a_path(node, parents.get(node)))]
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value!r}"
            for node in sorted(found, key=lambda n: (n.lineno, n.col_offset))]


def test_runs_declares_the_names_the_scan_looks_for():
    names = declared_names()
    assert {runs.CONFIG, runs.METRICS, runs.HISTORY, runs.FINAL, runs.CHECKPOINTS, runs.RUN_INFO, runs.MARKER,
            runs.ADAPTER_FILE, runs.MODEL_CONFIG, runs.PREDICTIONS, runs.PIPELINE_SUMMARY} <= names
    assert "extended_vocab" not in names


def test_the_scan_finds_a_spelled_name(tmp_path):
    module = tmp_path / "module.py"
    module.write_text('import os\nLOGGER = "tensorboard"\n\n\ndef f(run_dir, logger):\n'
                      '    if logger == "tensorboard":\n        return run_dir / "tensorboard"\n'
                      '    return os.path.join(run_dir, "metrics.json")\n', encoding="utf-8")
    assert spelled_names(module, declared_names(), root=tmp_path) == [
        "module.py:7: 'tensorboard'", "module.py:8: 'metrics.json'"]


def test_no_module_but_runs_spells_a_run_folder_name():
    """Run-folder file and folder names live in medgpt/runs.py; other modules use runs.METRICS, runs.final_of(...)."""
    names = declared_names()
    spelled = [entry for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "runs.py"
               for entry in spelled_names(path, names)]
    assert spelled == [], "use medgpt.runs' names instead of spelling them:\n" + "\n".join(spelled)


def test_runs_imports_only_the_standard_library_and_errors():
    tree = ast.parse((PACKAGE / "runs.py").read_text(encoding="utf-8"))
    medgpt_imports = {node.module for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medgpt")}
    medgpt_imports |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
                       if a.name.startswith("medgpt")}
    assert medgpt_imports == {"medgpt.errors"}


# ---- the folders themselves ----

def test_find_run_dirs_skips_what_a_run_folder_holds(tmp_path):
    sweep = tmp_path / runs.MULTIRUN / "2026-11-26" / "10-00-00"
    for job in ("1", "0", "10"):
        (sweep / job / runs.HYDRA).mkdir(parents=True)
        runs.overrides_file(sweep / job).write_text("- seed=1\n")
    (sweep / runs.LEADERBOARD / "x").mkdir(parents=True)
    (sweep / runs.LEADERBOARD / "x" / runs.METRICS).write_text("{}")  # not a run: a leaderboard's folder
    assert runs.find_run_dirs(tmp_path) == [sweep / "0", sweep / "1", sweep / "10"]
    assert runs.sweep_name(sweep) == "2026-11-26/10-00-00"
    assert runs.sweep_name(tmp_path / "elsewhere") == "elsewhere"


def test_a_run_folder_resolves_to_its_final(tmp_path):
    run_dir = tmp_path / "run"
    final = runs.final_of(run_dir)
    final.mkdir(parents=True)
    assert runs.final_if_run(run_dir) == final and not runs.holds_model(final)
    (final / runs.ADAPTER_FILE).write_text('{"base_model_name_or_path": "base", "task_type": "CAUSAL_LM"}')
    assert runs.holds_model(final) and runs.is_adapter(final) and runs.adapter_base(final) == "base"
    assert runs.final_if_run(final) is None and runs.model_architectures(final) == []
    runs.write_run_info(final, {"template": "qwen", "note": "é"})
    assert runs.run_info(final) == {"template": "qwen", "note": "é"} and runs.run_info(run_dir) == {}


@pytest.mark.slow
def test_a_real_run_leaves_the_layout_runs_declares(tmp_path):
    """`python train.py` as a user runs it: every file and folder it leaves is one runs.py names, where runs.py
    says it is."""
    done = run_cli("logger=none", "stage.args.max_steps=2", "stage.args.save_steps=1", f"output_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    group = runs.run_group(tmp_path, "sft", "tiny", "cpu")
    [run_dir] = list(group.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == [runs.RUNS]

    assert {p.name for p in run_dir.iterdir()} == {runs.CONFIG, runs.ENVIRONMENT, runs.METRICS, runs.HISTORY,
                                                    runs.TRAIN_LOG, runs.HYDRA, runs.CHECKPOINTS, runs.FINAL,
                                                    runs.LOCK}
    assert runs.overrides_file(run_dir).is_file() and runs.find_run_dirs(tmp_path) == [run_dir]
    assert runs.log_history(run_dir) and runs.run_folder(str(group), "auto") != str(run_dir)  # completed

    checkpoints = run_dir / runs.CHECKPOINTS
    assert [step for step, _ in runs.checkpoints_of(checkpoints)] == [1, 2]
    assert all((path / runs.MARKER).is_file() and runs.problem(path) is None
               for _, path in runs.checkpoints_of(checkpoints))
    assert runs.newest_complete(checkpoints) == checkpoints / "checkpoint-2"

    final = runs.final_of(run_dir)
    assert runs.final_if_run(run_dir) == final and runs.holds_model(final)
    names = {p.name for p in final.iterdir()}
    assert {runs.RUN_INFO, runs.MODEL_CONFIG, runs.GENERATION_CONFIG} <= names and runs.TRAINING_ARGS not in names
    info = runs.run_info(final)
    assert info["stage"] == "sft" and info["adapter"] is False and not runs.is_adapter(final)


def test_a_lora_run_leaves_an_adapter_in_final(tmp_path):
    run_dir, metrics = train_in_process(tmp_path, "hardware=lora", "stage.args.max_steps=1")
    final = runs.final_of(run_dir)
    assert metrics["status"] == "completed" and runs.is_adapter(final)
    assert (final / runs.ADAPTER_WEIGHTS).is_file() and not (final / runs.MODEL_CONFIG).exists()
    assert runs.run_info(final)["adapter"] is True and runs.adapter_base(final) == runs.run_info(final)["base_model"]
