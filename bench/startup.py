"""Start-up cost: `python train.py --help`, `--cfg job`, and the time from `python train.py ...` to the end of the
first training step (recorded by the run itself as metrics.json's seconds_to_first_step).

    python bench/startup.py [--repeat 3]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args):
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    rows = {"help": statistics.median(timed(["--help"]) for _ in range(repeat)),
            "cfg_job": statistics.median(timed(["--cfg", "job"]) for _ in range(repeat))}
    first_step = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            timed([f"output_root={out}", "logger=none", "stage.args.max_steps=1", "stage.args.save_strategy=no"])
            (metrics,) = Path(out).glob("runs/*/*/metrics.json")
            first_step.append(json.loads(metrics.read_text())["seconds_to_first_step"])
    rows["first_step"] = statistics.median(first_step)
    print(f"{'what':<12} {'seconds (median of ' + str(repeat) + ')':>24}")
    for name, seconds in rows.items():
        print(f"{name:<12} {seconds:>24.2f}")
    print(" ".join(f"{k}_s={v:.2f}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
