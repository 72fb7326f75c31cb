"""The end of an eval: a summary table on stdout and the metrics in W&B under eval/.

    medgpt eval compare outputs/runs/eval-*/*      # several runs side by side
"""
from __future__ import annotations

from typing import Dict

from medgpt.leaderboard import format_table
from medgpt.runs import PREDICTIONS

SUMMARY_COLUMNS = ["task", "kind", "n", "accuracy", "margin", "exact_match", "f1", "rouge_l", "judge", "perplexity",
                   "acc", "acc_norm"]  # acc*: lm-evaluation-harness tasks


def task_rows(metrics: Dict) -> list:
    """{"mcq_demo/accuracy": 0.4, ...} -> [{"task": "mcq_demo", "accuracy": 0.4, ...}] (one row per task)."""
    rows: Dict[str, dict] = {}
    for key, value in metrics.items():
        task, _, metric = key.rpartition("/")
        if task and metric in SUMMARY_COLUMNS:
            rows.setdefault(task, {"task": task})[metric] = value
    return list(rows.values())


def summary(metrics: Dict) -> str:
    rows = task_rows(metrics)
    columns = [c for c in SUMMARY_COLUMNS if any(c in r for r in rows)]
    return format_table(rows, columns=columns)


def publish(metrics: Dict, run_dir) -> None:
    """W&B (under eval/) and the summary table on stdout."""
    log_wandb(metrics)
    print(f"\n{summary(metrics)}\npredictions  {run_dir}/{PREDICTIONS}/<file>.jsonl", flush=True)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def log_wandb(metrics: Dict) -> None:
    """Numbers to the live W&B run (if any), each under eval/ once."""
    import sys

    wandb = sys.modules.get("wandb")  # only when the run started W&B
    if wandb is None or wandb.run is None:
        return
    numbers = {k if k.startswith("eval/") else f"eval/{k}": v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    wandb.log(numbers)
    wandb.run.summary.update(numbers)
