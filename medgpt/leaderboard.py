"""Leaderboard of training runs: one row per job (its overrides as columns, its metrics.json values, its status),
printed as an aligned table or written as markdown / CSV / JSON. No training code is imported here.

    python sweep.py outputs/multirun/2026-11-26/10-00-00 --sort eval_loss --format md
    python sweep.py 'outputs/runs/*/*' --no-plots                          # every single run so far
    python sweep.py 'outputs/runs/eval-*/*' --suite medical_zh               # eval runs ranked by the suite
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

import yaml

from medgpt import runs

# train_runtime, not runtime_s: the first job of a multirun also pays the library imports in runtime_s
METRICS = ("status", "train_loss", "final_train_loss", "eval_loss", "global_step", "train_runtime",
           "tokens_per_second", "peak_memory_mb")
FORMATS = ("text", "md", "csv", "json")


def override_key(key: str) -> str:
    """`++stage.args.max_steps` -> `stage.args.max_steps` (the config key an override sets)."""
    return key.lstrip("+~")


def parse_value(text: str) -> Any:
    """An override's value as the number it spells, else the string (so columns sort and plot as numbers)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_overrides(run_dir: Path) -> List[str]:
    """The override strings that made this job (Hydra writes them to .hydra/overrides.yaml)."""
    path = runs.overrides_file(run_dir)
    return [str(o) for o in (yaml.safe_load(path.read_text(encoding="utf-8")) or [])] if path.is_file() else []


def swept_keys(sweep_dir: Path) -> Set[str]:
    """Keys a multirun swept over: sweep overrides (`a=1,2`, `range(..)`) on its command line and the keys of
    hydra.sweeper.params, read from the multirun.yaml the basic sweeper writes. Empty if there is none."""
    path = runs.multirun_config(sweep_dir)
    if not path.is_file():
        return set()
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("hydra", {})
    task = [str(o) for o in (hydra_cfg.get("overrides") or {}).get("task") or []]
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    parsed = OverridesParser.create().parse_overrides(task + [f"{k}={v}" for k, v in params.items()])
    return {override_key(o.get_key_element()) for o in parsed if o.is_sweep_override()}


def _flat(prefix: str, data: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(f"{prefix}{key}.", value))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = value
    return out


def load_row(run_dir: Path) -> Dict[str, Any]:
    overrides = read_overrides(run_dir)
    metrics_path = run_dir / runs.METRICS
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        metrics = {"status": "incomplete", "error": f"no {runs.METRICS}: the job was killed or is still running"}
    row: Dict[str, Any] = {"job": f"{run_dir.parent.name}/{run_dir.name}", "run_dir": str(run_dir),
                           "sweep": str(run_dir.parent) if run_dir.name.isdigit() else None,
                           **_flat("", metrics), "overrides": " ".join(overrides), "override_keys": [],
                           "swept_keys": sorted(swept_keys(run_dir.parent))}
    for item in overrides:
        if "=" in item:
            key, value = item.split("=", 1)
            row[override_key(key)] = parse_value(value)
            row["override_keys"].append(override_key(key))
    row["run_dir"] = str(run_dir)  # the folder read, even when metrics.json names another path
    return row


def load_rows(paths: Iterable[str]) -> List[Dict[str, Any]]:
    """One row per job found under `paths` (multirun folders, run folders or globs of either): its overrides as
    columns (plus `overrides`, the whole string), every metrics.json value (nested ones as `a.b`), `status`
    (completed / failed with `error` / incomplete), `job`, `run_dir`, `sweep`."""
    rows: List[Dict[str, Any]] = []
    seen: Set[Path] = set()
    for pattern in paths:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            for run_dir in runs.find_run_dirs(Path(match)):
                if run_dir.resolve() not in seen:
                    seen.add(run_dir.resolve())
                    rows.append(load_row(run_dir))
    return rows


def varying_overrides(rows: List[Dict[str, Any]]) -> List[str]:
    """Override keys that were swept (multirun.yaml) or differ between rows, in first-seen order."""
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row.get("override_keys", []) if k not in keys]
    swept = {k for row in rows for k in row.get("swept_keys", [])}
    return [k for k in keys if k in swept or len({repr(row.get(k)) for row in rows}) > 1]


def fixed_overrides(rows: List[Dict[str, Any]]) -> List[str]:
    varying = set(varying_overrides(rows))
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row.get("override_keys", []) if k not in varying and k not in keys]
    return [f"{k}={rows[0].get(k)}" for k in keys]


def default_columns(rows: List[Dict[str, Any]]) -> List[str]:
    columns = ["job"] + varying_overrides(rows)
    columns += [m for m in METRICS if any(row.get(m) is not None for row in rows)]
    if any(row.get("error") for row in rows):
        columns.append("error")
    return columns


def suite_of(rows: List[Dict[str, Any]], wanted: Optional[str] = None) -> Optional[str]:
    """The benchmark suite the rows were scored on (`suite` in metrics.json, eval=<suite>): `wanted` if some row
    has it, else the most common one; None when no row ran a suite."""
    names = [row.get("suite") for row in rows if isinstance(row.get(f"{row.get('suite')}/macro_accuracy"), float)
             or isinstance(row.get(f"{row.get('suite')}/macro_gen_accuracy"), float)]
    if wanted:
        return wanted if wanted in names else None
    return max(set(names), key=names.count) if names else None


def suite_columns(rows: List[Dict[str, Any]], suite: str) -> List[str]:
    """job, each benchmark's accuracy (log-likelihood, then generation), the suite's macro averages."""
    benchmarks: List[str] = []
    for row in rows:
        if row.get("suite") == suite:
            benchmarks += [k[:-len("/n")] for k in row if k.endswith("/n") and f"{k[:-2]}/prompt_version" in row
                           and k[:-2] not in benchmarks]
    columns = ["job"] + [f"{b}/accuracy" for b in benchmarks] + [f"{b}/gen_accuracy" for b in benchmarks]
    columns += [f"{suite}/macro_accuracy", f"{suite}/macro_gen_accuracy"]
    return [c for c in columns if any(row.get(c) is not None for row in rows)]


def sort_rows(rows: List[Dict[str, Any]], sort: Optional[str]) -> List[Dict[str, Any]]:
    """Sort by a column (`-col` for descending); rows without a value (failed jobs) always go last."""
    if not sort:
        return list(rows)
    key, reverse = (sort[1:], True) if sort.startswith("-") else (sort, False)
    present = [r for r in rows if isinstance(r.get(key), (int, float, str)) and not isinstance(r.get(key), bool)]
    absent = [r for r in rows if r not in present]
    numbers = all(isinstance(r[key], (int, float)) for r in present)
    present.sort(key=lambda r: r[key] if numbers else str(r[key]), reverse=reverse)
    return present + absent


def _cell(value: Any, width: Optional[int] = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    else:
        text = str(value).replace("\n", " ").replace("|", "/")
    return text if width is None or len(text) <= width else text[:width - 3] + "..."


def format_table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None, sort: Optional[str] = None,
                 fmt: str = "text") -> str:
    """rows (from load_rows) -> an aligned terminal table (text), markdown (md), CSV or JSON. columns: default
    job, swept overrides, the usual metrics present, and error when a job failed. sort: a column, `-col` for
    descending."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: use one of {', '.join(FORMATS)}")
    columns = list(columns) if columns else default_columns(rows)
    rows = sort_rows(rows, sort)
    if fmt == "json":
        return json.dumps([{c: row.get(c) for c in columns} for row in rows], indent=1, ensure_ascii=False,
                          default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if row.get(c) is None else row.get(c) for c in columns] for row in rows])
        return out.getvalue()
    cells = [[_cell(row.get(c), 60 if c == "error" else 40) for c in columns] for row in rows]
    fixed = fixed_overrides(rows)
    footer = [f"same in all jobs: {' '.join(fixed)}"] if fixed else []
    if fmt == "md":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines + ([""] + footer if footer else [])) + "\n"
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]

    def line(items):
        return "  ".join(t.rjust(w) if n else t.ljust(w) for t, w, n in zip(items, widths, numeric)).rstrip()

    lines = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(lines + footer) + "\n"


def _callback_base():
    try:
        from hydra.experimental.callback import Callback

        return Callback
    except ImportError:  # hydra without callbacks: the class is then a plain object
        return object


class PrintAtMultirunEnd(_callback_base()):
    """Hydra callback (conf/train.yaml hydra.callbacks): when a multirun ends, print its leaderboard sorted by
    cfg.objective and the command that writes the files and plots."""

    def on_multirun_end(self, config, **kwargs) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        sweep_dir = str(config.hydra.sweep.dir)
        rows = load_rows([sweep_dir])
        if rows:
            print(f"\nsweep {sweep_dir}: {len(rows)} job(s), sorted by {config.get('objective')}\n"
                  + format_table(rows, sort=config.get("objective"))
                  + f"files and plots: python sweep.py {sweep_dir}", flush=True)
