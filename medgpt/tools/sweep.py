"""Leaderboard and plots of a sweep: one row per job, sorted by a metric; PNGs of the loss curves and of the metric
against each swept parameter. Reads run folders only (never imports training code), so it is quick.

    medgpt sweep outputs/multirun/2026-11-26/10-00-00                       # table + files in <folder>/leaderboard
    medgpt sweep outputs/multirun/2026-11-26/* --sort eval_loss --format md --out reports/
    python sweep.py outputs/multirun/2026-11-26/10-00-00                    # the same
    medgpt sweep 'outputs/runs/eval-*/*' --suite medical_zh                 # rank models by a benchmark suite
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from medgpt.leaderboard import FORMATS, format_table, load_rows, suite_columns, suite_of, varying_overrides
from medgpt.runs import LEADERBOARD, log_history

SUFFIX = {"text": "txt", "md": "md", "csv": "csv", "json": "json"}


def pick_metric(rows: List[Dict[str, Any]], wanted: Optional[str]) -> Optional[str]:
    if wanted:
        return wanted.lstrip("-")
    return next((m for m in ("eval_loss", "train_loss") if any(isinstance(r.get(m), (int, float)) for r in rows)),
                None)


def suite_ranking(rows: List[Dict[str, Any]], suite: Optional[str], columns: Optional[List[str]]):
    """--suite <name> (or runs that only ran a suite): sort by its macro accuracy (log-likelihood, else
    generation), best first; columns: each benchmark and the macro averages. (metric, sort, columns) or None."""
    name = suite_of(rows, suite)
    if name is None:
        return None
    metric = next(m for m in (f"{name}/macro_accuracy", f"{name}/macro_gen_accuracy")
                  if any(isinstance(r.get(m), (int, float)) for r in rows))
    return metric, f"-{metric}", columns or suite_columns(rows, name)


def job_label(row: Dict[str, Any], keys: List[str]) -> str:
    return " ".join([row["job"].rsplit("/", 1)[-1]] + [f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in keys])


def plot_loss_curves(rows, keys, path: Path) -> Optional[Path]:
    """Training loss (solid) and eval loss (dashed, same colour) of every job against the step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = 0
    for i, row in enumerate(rows):
        history = log_history(row["run_dir"])
        for key, style in (("loss", "-"), ("eval_loss", "--")):
            points = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and "step" in h]
            if points:
                ax.plot(*zip(*points), style, marker="o", markersize=3, color=f"C{i % 10}",
                        label=job_label(row, keys) + ("" if key == "loss" else " (eval)"))
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    return save_figure(fig, ax, path, xlabel="step", ylabel="loss", title="loss curves")


def save_figure(fig, ax, path: Path, **labels) -> Path:
    """Label, grid, legend, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs(rows, metric: str, key: str, others: List[str], path: Path) -> Optional[Path]:
    """The metric against one swept parameter: one line per combination of the other swept parameters."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not done:
        return None
    values = [r.get(key) for r in done]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    categories = sorted({str(v) for v in values}) if not numeric else []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: Dict[str, list] = {}
    for row in done:
        label = " ".join(f"{o.rsplit('.', 1)[-1]}={row.get(o)}" for o in others) or metric
        x = row.get(key) if numeric else categories.index(str(row.get(key)))
        series.setdefault(label, []).append((x, row[metric]))
    for label, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=label)
    if numeric and min(values) > 0 and max(values) / min(values) >= 20:
        ax.set_xscale("log")
    if categories:
        ax.set_xticks(range(len(categories)), categories)
    return save_figure(fig, ax, path, xlabel=key, ylabel=metric, title=f"{metric} vs {key}")


def write_outputs(rows, out: Path, metric: Optional[str], sort: Optional[str], columns, plots: bool) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("md", "csv", "json"):
        path = out / f"leaderboard.{SUFFIX[fmt]}"
        path.write_text(format_table(rows, columns, sort, fmt), encoding="utf-8")
        written.append(path)
    if plots and rows:
        import matplotlib

        matplotlib.use("Agg")
        keys = varying_overrides(rows)
        written.append(plot_loss_curves(rows, keys, out / "loss_curves.png"))
        for key in keys if metric else []:
            name = re.sub(r"[^\w.-]+", "_", f"{metric}_vs_{key}")
            written.append(plot_metric_vs(rows, metric, key, [k for k in keys if k != key], out / f"{name}.png"))
    return [p for p in written if p]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medgpt sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="multirun folders, run folders or globs (quote them)")
    parser.add_argument("--sort", help="column to sort by (default: eval_loss, else train_loss); -col: descending")
    parser.add_argument("--suite", help="rank eval runs by this benchmark suite's macro accuracy, best first "
                                        "(e.g. medical_zh); the default for runs that only scored a suite")
    parser.add_argument("--desc", action="store_true", help="sort descending (for metrics where higher is better)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="what to print (files get md/csv/json)")
    parser.add_argument("--columns", help="comma-separated columns (default: job, swept overrides, metrics)")
    parser.add_argument("--out", help="folder for leaderboard.{md,csv,json} and PNGs "
                                      "(default: <path>/leaderboard for one folder, else ./leaderboard)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    rows = load_rows(args.paths)
    if not rows:
        print(f"error: no run folders (metrics.json or .hydra/overrides.yaml) under {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    metric = pick_metric(rows, args.sort)
    sort = f"-{metric}" if metric and (args.desc or (args.sort or "").startswith("-")) else metric
    columns = args.columns.split(",") if args.columns else None
    ranked = suite_ranking(rows, args.suite, columns) if args.suite or metric is None else None
    if args.suite and not ranked:
        print(f"error: no run under {' '.join(args.paths)} scored the suite {args.suite} "
              f"(python train.py stage=eval eval={args.suite} model.path=<run>)", file=sys.stderr)
        return 2
    if ranked:
        metric, sort, columns = ranked
    print(format_table(rows, columns, sort, args.format), end="")
    single = len(args.paths) == 1 and Path(args.paths[0]).is_dir()
    out = Path(args.out) if args.out else (Path(args.paths[0]) / LEADERBOARD if single else Path(LEADERBOARD))
    written = write_outputs(rows, out, metric, sort, columns, not args.no_plots)
    failed = sum(r.get("status") != "completed" for r in rows)
    print(f"\n{len(rows)} job(s), {failed} not completed; sorted by {sort or 'job'}; wrote "
          f"{', '.join(p.name for p in written)} to {out}", file=sys.stderr)
    return 0

