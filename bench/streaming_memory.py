"""Benchmark: peak memory (RSS) of reading, tokenizing and packing a pre-training corpus of 1x, 10x and 100x a
generated FEVER-like text (claims and evidence sentences), with data.streaming=true against the in-memory path
(load every record, then tokenize into blocks). Each measurement runs in a fresh process; a benchmark, not a test.

    OMP_NUM_THREADS=1 python bench/streaming_memory.py                  # base 2000 lines; x1, x10, x100
    python bench/streaming_memory.py --base-lines 500 --factors 1,10 --no-in-memory
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("patient physician fever cough aspirin dose hospital treatment symptom infection virus vaccine trial "
         "study clinic blood pressure heart lung liver kidney chronic acute therapy diagnosis risk outcome "
         "disease history born city river film album novel country war president team season").split()


def fever_like_line(rng: random.Random) -> str:
    """One FEVER-style record: a claim and the evidence sentences it is checked against."""
    def sentence(n):
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."
    return f"Claim: {sentence(rng.randint(6, 14))} Evidence: " + " ".join(sentence(rng.randint(8, 20))
                                                                          for _ in range(rng.randint(2, 5)))


def write_corpus(folder: Path, base_lines: int, factor: int) -> Path:
    rng = random.Random(0)
    base = [fever_like_line(rng) for _ in range(base_lines)]
    path = folder / f"fever_x{factor}.txt"
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(factor):
            for line in base:
                f.write(f"{line} ({copy})\n")
    return path


def child(mode: str, corpus: str) -> None:
    """Run one pipeline over the whole corpus; print its peak RSS and block count as JSON."""
    import logging

    logging.disable(logging.WARNING)
    from medgpt.config import compose, resolve
    from medgpt.modeling.load import load_tokenizer

    cfg = compose(["stage=pt", "model=tiny", "data=pt_demo", f"data.train_files=[{corpus}]", "data.block_size=512",
                   "data.eval_split=0", "stage.args.max_steps=1", f"data.streaming={mode == 'streaming'}"])
    settings = resolve(cfg, {"cuda": False, "bf16": False})
    tokenizer = load_tokenizer(cfg.model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "streaming":
        from medgpt.data.streaming import streaming_dataset

        blocks = sum(1 for _ in streaming_dataset(cfg, tokenizer, settings))
    else:
        from medgpt.data import load_data
        from medgpt.stages import pt

        rows = load_data(cfg.data, cfg.stage)[0].rows
        blocks = len(pt.prepare(rows, tokenizer, cfg, settings)[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "imports_mb": before / 1024, "blocks": blocks,
                      "seconds": time.perf_counter() - start}))


def measure(mode: str, corpus: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} on {corpus} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-lines", type=int, default=2000)
    parser.add_argument("--factors", default="1,10,100")
    parser.add_argument("--no-in-memory", action="store_true", help="measure streaming only")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return child(*options.child)
    folder = Path(tempfile.mkdtemp(prefix="medgpt-bench-stream-"))
    modes = ["streaming"] + ([] if options.no_in_memory else ["in_memory"])
    rows = []
    for factor in [int(f) for f in options.factors.split(",")]:
        corpus = write_corpus(folder, options.base_lines, factor)
        size_mb = corpus.stat().st_size / 2 ** 20
        for mode in modes:
            result = measure(mode, corpus)
            rows.append((factor, size_mb, mode, result))
            print(f"  x{factor} ({size_mb:.1f} MB) {mode}: peak {result['peak_mb']:.0f} MB", file=sys.stderr,
                  flush=True)
        corpus.unlink()
    print(f"{'factor':>6} {'corpus_mb':>9} {'mode':>10} {'blocks':>8} {'seconds':>8} {'imports_mb':>10} "
          f"{'peak_mb':>8} {'peak-imports':>12}")
    for factor, size_mb, mode, r in rows:
        print(f"{factor:>6} {size_mb:>9.1f} {mode:>10} {r['blocks']:>8} {r['seconds']:>8.1f} {r['imports_mb']:>10.0f} "
              f"{r['peak_mb']:>8.0f} {r['peak_mb'] - r['imports_mb']:>12.0f}")
    streaming = {factor: r for factor, _, mode, r in rows if mode == "streaming"}
    low, high = min(streaming), max(streaming)
    fields = [f"name=streaming_memory", f"corpus_mb_x{high}={rows[-1][1] if rows[-1][0] == high else 0:.1f}"]
    for factor, _, mode, r in rows:
        fields.append(f"{mode}_peak_mb_x{factor}={r['peak_mb']:.0f}")
    fields.append(f"streaming_growth_x{low}_to_x{high}={streaming[high]['peak_mb'] / streaming[low]['peak_mb']:.3f}")
    print(" ".join(fields))


if __name__ == "__main__":
    main()
