"""Start-up cost: `python train.py --help`, `--cfg job`, and the time from `python train.py ...` to the end of the
first training step (recorded by the run itself as metrics.json's seconds_to_first_step); with `--records N`, the
same for stage=sft on N chat records (MedicalGPT's 1K SFT sample repeated, all distinct), first run (an empty data
cache: read, normalise and tokenize them all) and cached run.

    python bench/startup.py [--repeat 3]
    OMP_NUM_THREADS=1 python bench/startup.py --records 100000 --model qwen3     # the real Qwen3 tokenizer
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args, env=None):
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args], check=True, capture_output=True, cwd=ROOT,
                   env=env)
    return time.perf_counter() - start


def first_step(args, env=None) -> float:
    with tempfile.TemporaryDirectory() as out:
        timed([f"output_root={out}", "logger=none", "stage.args.max_steps=1", "stage.args.save_strategy=no", *args],
              env)
        (metrics,) = Path(out).glob("runs/*/*/metrics.json")
        return json.loads(metrics.read_text())["seconds_to_first_step"]


def on_records(count: int, model: str) -> dict:
    """seconds_to_first_step of stage=sft on `count` records: with an empty data cache, then cached."""
    from data_prep import replicated_file

    from medgpt.data.cache import CACHE_ENV

    model_args = []
    if model == "qwen3":
        from medgpt.modeling.official import tiny_model_dir

        model_args = ["model=qwen3-0.6b", f"model.path={tiny_model_dir('qwen3')}"]
    with tempfile.TemporaryDirectory() as folder:
        data = replicated_file(count, Path(folder))
        env = dict(os.environ, **{CACHE_ENV: str(Path(folder) / "cache")})
        args = ["stage=sft", *model_args, f"data.train_files=[{data}]", "data.eval_split=0"]
        return {f"first_step_{count}_records": first_step(args, env),
                f"first_step_{count}_records_cached": first_step(args, env)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, help="also time the first SFT step on this many records")
    parser.add_argument("--model", default="tiny", choices=["tiny", "qwen3"])
    args = parser.parse_args()
    if args.records:
        rows = on_records(args.records, args.model)
    else:
        rows = {"help": statistics.median(timed(["--help"]) for _ in range(args.repeat)),
                "cfg_job": statistics.median(timed(["--cfg", "job"]) for _ in range(args.repeat)),
                "first_step": statistics.median(first_step([]) for _ in range(args.repeat))}
    width = max(map(len, rows))
    print(f"{'what':<{width}} {'seconds':>10}")
    for name, seconds in rows.items():
        print(f"{name:<{width}} {seconds:>10.2f}")
    print(" ".join(f"{k}_s={v:.2f}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
