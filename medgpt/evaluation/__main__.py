"""Compare evaluated runs side by side, with the same table code as sweep.py (medgpt.leaderboard).

    python -m medgpt.evaluation compare outputs/runs/eval-tiny-cpu/* --sort -mcq_accuracy
    python -m medgpt.evaluation compare runA runB --columns mcq_accuracy qa_f1 perplexity --format md
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

# Aggregate eval metrics, shown in this order when present (eval_after_train runs: the same with eval/ in front)
EVAL_COLUMNS = ["mcq_accuracy", "qa_exact_match", "qa_f1", "qa_rouge_l", "qa_judge", "perplexity", "pref_accuracy",
                "pref_margin"]
ID_COLUMNS = ["job", "model_path", "stage"]


def default_columns(rows: List[dict]) -> List[str]:
    present = {key for row in rows for key in row}
    ids = [c for c in ID_COLUMNS if c in present]
    metrics = [p + c for c in EVAL_COLUMNS for p in ("", "eval/") if p + c in present]
    return ids + metrics


def compare(paths: List[str], columns: Optional[List[str]] = None, sort: Optional[str] = None,
            fmt: str = "text") -> str:
    from medgpt.leaderboard import format_table, load_rows

    rows = load_rows(paths)
    return format_table(rows, columns=columns or default_columns(rows), sort=sort, fmt=fmt)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="one table of several runs' eval metrics")
    cmp.add_argument("runs", nargs="+", help="run folders (or their metrics.json)")
    cmp.add_argument("--columns", nargs="+", help=f"metrics.json keys (default: those of {EVAL_COLUMNS} present)")
    cmp.add_argument("--sort", help="a column to sort by; -column for descending, e.g. -mcq_accuracy")
    cmp.add_argument("--format", default="text", dest="fmt", help="text | md | csv | json (as sweep.py)")
    args = parser.parse_args(argv)
    print(compare(args.runs, args.columns, args.sort, args.fmt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
