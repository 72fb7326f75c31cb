"""Compare evaluated runs side by side, with the same table code as sweep.py (medgpt.leaderboard).

    medgpt eval compare outputs/runs/eval-tiny-cpu/* --sort=-mcq_accuracy
    medgpt eval compare runA runB --columns mcq_accuracy qa_f1 perplexity --format md
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from medgpt.leaderboard import format_table, load_rows

# Aggregate eval metrics, shown in this order when present
EVAL_COLUMNS = ["mcq_accuracy", "qa_exact_match", "qa_f1", "qa_rouge_l", "qa_judge", "perplexity", "pref_accuracy",
                "pref_margin"]
ID_COLUMNS = ["job", "model_path", "stage"]


def default_columns(rows: List[dict]) -> List[str]:
    present = {key for row in rows for key in row}
    ids = [c for c in ID_COLUMNS if c in present]
    suites = sorted({k for k in present if k.endswith(("/macro_accuracy", "/macro_gen_accuracy"))})  # eval=<suite>
    return ids + [c for c in EVAL_COLUMNS if c in present] + suites


def unprefixed(row: dict) -> dict:
    """eval_after_train runs store eval/<metric>: show them in the same columns as stage=eval runs."""
    return {**{k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}, **row}


def compare(paths: List[str], columns: Optional[List[str]] = None, sort: Optional[str] = None,
            fmt: str = "text") -> str:
    rows = [unprefixed(row) for row in load_rows(paths)]
    return format_table(rows, columns=columns or default_columns(rows), sort=sort, fmt=fmt)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medgpt eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="one table of several runs' eval metrics")
    cmp.add_argument("runs", nargs="+", help="run folders (or their metrics.json)")
    cmp.add_argument("--columns", nargs="+", help=f"metrics.json keys (default: those of {EVAL_COLUMNS} present)")
    cmp.add_argument("--sort", help="a column to sort by; --sort=-column for descending, e.g. --sort=-mcq_accuracy")
    cmp.add_argument("--format", default="text", dest="fmt", help="text | md | csv | json (as sweep.py)")
    args = parser.parse_args(argv)
    print(compare(args.runs, args.columns, args.sort, args.fmt))
    return 0
