"""Benchmark: SFT tokenization of 1k / 10k / 100k records (medical_sft_1K_format.jsonl replicated), first run
(tokenize + write the Arrow cache) against a cached run (hash the records + open the cache), in records/s, with
the scaling exponent of the first run (time ~ n^k; k ~ 1 means linear). Wall and CPU seconds of this process are
both shown: on a shared machine CPU time is the steadier measure (num_proc > 1 moves work into child processes,
so compare wall time there). A benchmark, not a test.

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

from sft_throughput import sample_rows


def replicated_rows(n: int):
    """n records: the 1K sample repeated, each copy's first question tagged so every record is distinct."""
    base = sample_rows()
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
    from medgpt.config import compose, resolve
    from medgpt.data.cache import cached_prepare
    from medgpt.modeling.load import load_tokenizer
    from medgpt.stages import sft

    cfg = compose(["stage=sft", "model=tiny", f"model.max_length={options.max_length}",
                   f"data.num_proc={options.num_proc}"])
    settings = resolve(cfg, {"cuda": False, "bf16": False})
    tokenizer = load_tokenizer(cfg.model)
    results = []
    for n in [int(s) for s in options.sizes.split(",")]:
        rows = replicated_rows(n)
        first, (dataset, counts) = timed(cached_prepare, sft, rows, tokenizer, cfg, settings)
        assert counts["data_cache"] == "miss"
        cached, (again, counts) = timed(cached_prepare, sft, rows, tokenizer, cfg, settings)
        assert counts["data_cache"] == "hit" and len(again) == len(dataset)
        results.append((n, first, cached))
        print(f"  {n} records: first {first}, cached {cached} (wall s, cpu s)", file=sys.stderr, flush=True)

    print(f"{'records':>8} {'first_wall_s':>12} {'first_cpu_s':>11} {'first_rec/s':>11} {'cached_wall_s':>13} "
          f"{'cached_cpu_s':>12} {'cached_rec/s':>12} {'speedup_wall':>12} {'speedup_cpu':>11}")
    for n, (fw, fc), (cw, cc) in results:
        print(f"{n:>8} {fw:>12.2f} {fc:>11.2f} {n / fc:>11.0f} {cw:>13.3f} {cc:>12.3f} {n / cc:>12.0f} "
              f"{fw / cw:>12.1f} {fc / cc:>11.1f}")
    n, (fw, fc), (cw, cc) = results[-1]
    print(f"name=data_prep records={n} num_proc={options.num_proc} first_wall_s={fw:.2f} first_cpu_s={fc:.2f} "
          f"cached_wall_s={cw:.3f} cached_cpu_s={cc:.3f} first_rec_per_cpu_s={n / fc:.0f} "
          f"cached_rec_per_cpu_s={n / cc:.0f} speedup_wall={fw / cw:.1f} speedup_cpu={fc / cc:.1f} "
          f"scaling_exponent_cpu={slope([r[0] for r in results], [r[1][1] for r in results]):.2f}")


def timed(fn, *args):
    """((wall seconds, cpu seconds of this process), fn(*args))."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return (round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)), out


def slope(sizes, seconds) -> float:
    """Least-squares exponent k of seconds ~ sizes^k."""
    if len(sizes) < 2:
        return float("nan")
    xs, ys = [math.log(n) for n in sizes], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


if __name__ == "__main__":
    main()
