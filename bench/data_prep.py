"""Benchmark: SFT tokenization of 1k / 10k / 100k records (medical_sft_1K_format.jsonl replicated), first run
(tokenize + write the Arrow cache) against a cached run (hash the records + open the cache), in records/s, with
the scaling exponent of the first run (time ~ n^k; k ~ 1 means linear). A benchmark, not a test.

    OMP_NUM_THREADS=1 python bench/data_prep.py                       # sizes 1000,10000,100000
    python bench/data_prep.py --sizes 1000,10000 --num-proc 2
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = Path(os.environ.get("MEDGPT_SAMPLES", ROOT.parent / "shared" / "data" / "medicalgpt-samples")) / \
    "medical_sft_1K_format.jsonl"


def replicated_rows(n: int):
    """n records: the 1K sample repeated, each copy's first question tagged so every record is distinct."""
    from medgpt.data.loading import load_split

    base = load_split([SAMPLE], accepted=["sharegpt"]).rows
    rows = []
    for i in range(n):
        row = base[i % len(base)]
        messages = [dict(m) for m in row["messages"]]
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] += f" #{i // len(base)}"
        rows.append({"messages": messages})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    options = parser.parse_args()
    os.environ["MEDGPT_DATA_CACHE"] = tempfile.mkdtemp(prefix="medgpt-bench-cache-")
    import logging

    logging.disable(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose
    from medgpt.data.cache import cached_prepare
    from medgpt.models import load_tokenizer
    from medgpt.stages import sft

    cfg = compose("stage=sft", "model=tiny", f"model.max_length={options.max_length}",
                  f"data.num_proc={options.num_proc}")
    tokenizer = load_tokenizer(cfg.model)
    results = []
    for n in [int(s) for s in options.sizes.split(",")]:
        rows = replicated_rows(n)
        start = time.perf_counter()
        dataset, counts = cached_prepare(sft, rows, tokenizer, cfg)
        first = time.perf_counter() - start
        assert counts["data_cache"] == "miss"
        start = time.perf_counter()
        again, counts = cached_prepare(sft, rows, tokenizer, cfg)
        cached = time.perf_counter() - start
        assert counts["data_cache"] == "hit" and len(again) == len(dataset)
        results.append((n, first, cached))
        print(f"  {n} records: first {first:.2f}s, cached {cached:.3f}s", file=sys.stderr, flush=True)

    print(f"{'records':>8} {'first_s':>9} {'first_rec/s':>12} {'cached_s':>9} {'cached_rec/s':>13} {'speedup':>8}")
    for n, first, cached in results:
        print(f"{n:>8} {first:>9.2f} {n / first:>12.0f} {cached:>9.3f} {n / cached:>13.0f} {first / cached:>8.1f}")
    exponent = float("nan")
    if len(results) > 1:
        xs, ys = [math.log(n) for n, _, _ in results], [math.log(f) for _, f, _ in results]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    n, first, cached = results[-1]
    print(f"name=data_prep records={n} num_proc={options.num_proc} first_s={first:.2f} cached_s={cached:.3f} "
          f"first_rec_per_s={n / first:.0f} cached_rec_per_s={n / cached:.0f} speedup={first / cached:.1f} "
          f"scaling_exponent={exponent:.2f}")


if __name__ == "__main__":
    main()
