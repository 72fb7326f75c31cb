"""Benchmark: first-run SFT data preparation, medgpt side by side with MedicalGPT's per-turn preprocessing, on the
same records and the same tokenizer; then medgpt's cached run and its scaling over data.num_proc. A benchmark, not a
test.

    OMP_NUM_THREADS=1 python bench/data_prep.py                                  # real Qwen3 tokenizer, 1K sample
    OMP_NUM_THREADS=1 python bench/data_prep.py --tokenizer tiny --sizes 1000,10000,100000 --modes medgpt

Modes, each from the JSON-lines file to a tokenized `datasets.Dataset` with assistant-only labels, in one process:
  medicalgpt  MedicalGPT's supervised_finetuning.py without --template_name (the tokenizer's own chat template):
              load_dataset("json"), then a batched `map` that, per user/assistant pair, renders the conversation so
              far with apply_chat_template(tokenize=False) twice (with and without the generation prompt) to cut out
              the new prompt text, encodes prompt and answer separately, truncates them proportionally, appends EOS,
              and labels the answer; then `filter` drops samples without labels. Re-implemented here from that
              description (its code is not copied), with its `datasets` cache off for the first run.
  medgpt      medgpt's own path: read + normalise (medgpt.data.loading), then stage=sft's prepare through the data
              cache (medgpt.data.cache.cached_prepare: tokenize with labels, save as Arrow); `cached` = the second
              run (hash the records + open the cache).
Both use the same tokenizer; MedicalGPT renders with the tokenizer's official template, medgpt with its model
config's template (for Qwen3, medgpt/modeling/templates/qwen3.jinja). records/s = records / wall seconds; CPU
seconds of this process are shown too (on a shared machine the steadier measure; num_proc > 1 moves work into child
processes, so compare wall time there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("MEDGPT_SAMPLES", ROOT.parent / "shared" / "data" / "medicalgpt-samples")) \
    / "medical_sft_1K_format.jsonl"
IGNORE = -100


def replicated_file(n: int, folder: Path) -> Path:
    """n records in a JSON-lines file: the 1K sample repeated, each copy's first question tagged (all distinct)."""
    base = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    path = folder / f"sft_{n}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            record = json.loads(json.dumps(base[i % len(base)]))
            record["conversations"][0]["value"] += f" #{i // len(base)}" if i >= len(base) else ""
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def medicalgpt_prepare(path: Path, tokenizer, max_length: int, num_proc: int = 1):
    """MedicalGPT's per-turn preprocessing (see the module docstring), first run (no datasets cache)."""
    from datasets import disable_caching, load_dataset

    disable_caching()
    raw = load_dataset("json", data_files=str(path), split="train", cache_dir=tempfile.mkdtemp())
    eos = tokenizer.eos_token_id

    def dialogs(batch):
        for conversation in batch["conversations"]:
            pairs, pending = [], None
            for turn in conversation:
                if turn["from"] in ("human", "user"):
                    pending = turn["value"] if pending is None else pending + "\n" + turn["value"]
                elif turn["from"] in ("gpt", "assistant") and pending is not None:
                    pairs.append((pending, turn["value"]))
                    pending = None
            if not pairs:
                continue
            messages, texts, before = [], [], ""
            for question, answer in pairs:
                messages.append({"role": "user", "content": question})
                prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                texts += [prompt[len(before):], answer]
                messages.append({"role": "assistant", "content": answer})
                before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            yield texts

    def preprocess(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for texts in dialogs(batch):
            ids, labels = [], []
            for i in range(len(texts) // 2):
                source = tokenizer.encode(texts[2 * i], add_special_tokens=(i == 0))
                target = tokenizer.encode(texts[2 * i + 1], add_special_tokens=False)
                total = len(source) + len(target)
                source = source[:int(max_length * len(source) / total)]
                target = target[:int(max_length * len(target) / total) - 1]
                if len(ids) + len(source) + len(target) + 1 > max_length:
                    break
                ids += source + target + [eos]
                labels += [IGNORE] * len(source) + target + [eos]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    tokenized = raw.map(preprocess, batched=True, num_proc=num_proc if num_proc > 1 else None,
                        remove_columns=raw.column_names)
    return tokenized.filter(lambda example: any(label != IGNORE for label in example["labels"]),
                            num_proc=num_proc if num_proc > 1 else None)


def medgpt_prepare(path: Path, cfg, settings, tokenizer):
    """medgpt's path: read + normalise, then stage=sft's prepare through the data cache."""
    from medgpt.data.cache import cached_prepare
    from medgpt.data.loading import load_split
    from medgpt.stages import sft

    rows = load_split([path], accepted=["sharegpt"]).rows
    return cached_prepare(sft, rows, tokenizer, cfg, settings)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default="qwen3", help="qwen3 (the official tokenizer, medgpt.modeling."
                                                             "official) or tiny (the embedded model's)")
    parser.add_argument("--sizes", default="1000")
    parser.add_argument("--num-proc", default="1,2", help="data.num_proc values for medgpt's first run")
    parser.add_argument("--modes", default="medicalgpt,medgpt")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="first runs per mode (best is reported)")
    options = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import logging

    logging.disable(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    from medgpt.config import compose, resolve
    from medgpt.modeling.load import load_tokenizer

    if options.tokenizer == "tiny":
        model = ["model=tiny"]
    else:
        from medgpt.modeling.official import tiny_model_dir  # the official tokenizer, in a model folder

        model = ["model=qwen3-0.6b", f"model.path={tiny_model_dir('qwen3')}"]
    modes = options.modes.split(",")
    folder = Path(tempfile.mkdtemp(prefix="medgpt-bench-data-"))
    print(f"tokenizer={options.tokenizer} max_length={options.max_length} repeats={options.repeats} "
          f"cpus={os.cpu_count()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    print(f"{'records':>8} {'mode':<22} {'wall_s':>8} {'cpu_s':>8} {'rec/s':>8} {'samples':>8}", flush=True)
    results = {}
    for n in [int(s) for s in options.sizes.split(",")]:
        path = replicated_file(n, folder)
        if "medicalgpt" in modes:
            from transformers import AutoTokenizer

            from medgpt.modeling.load import resolve_path

            model_cfg = compose(model).model
            official = AutoTokenizer.from_pretrained(resolve_path(model_cfg.path, model_cfg.tiny))
            if official.chat_template is None:  # the tiny model's tokenizer has none: medgpt's template
                official.chat_template = load_tokenizer(model_cfg).chat_template
            runs = [timed(medicalgpt_prepare, path, official, options.max_length) for _ in range(options.repeats)]
            (wall, cpu), dataset = min(runs, key=lambda r: r[0][0])
            results[(n, "medicalgpt")] = wall
            results[(n, "medicalgpt_cpu")] = cpu
            print(f"{n:>8} {'medicalgpt first':<22} {wall:>8.2f} {cpu:>8.2f} {n / wall:>8.0f} {len(dataset):>8}",
                  flush=True)
        if "medgpt" in modes:
            for num_proc in [int(p) for p in options.num_proc.split(",")]:
                cfg = compose([*model, "stage=sft", f"data.max_length={options.max_length}",
                               f"data.num_proc={num_proc}"])
                settings = resolve(cfg, {"cuda": False, "bf16": False})
                tokenizer = load_tokenizer(cfg.model)
                firsts = []
                for _ in range(options.repeats):
                    os.environ["MEDGPT_DATA_CACHE"] = tempfile.mkdtemp(prefix="medgpt-bench-cache-")
                    firsts.append(timed(medgpt_prepare, path, cfg, settings, tokenizer))
                    assert firsts[-1][1][1]["data_cache"] == "miss"
                (wall, cpu), (dataset, _) = min(firsts, key=lambda r: r[0][0])
                results[(n, f"medgpt{num_proc}")] = wall
                results[(n, f"medgpt{num_proc}_cpu")] = cpu
                print(f"{n:>8} {f'medgpt first num_proc={num_proc}':<22} {wall:>8.2f} {cpu:>8.2f} "
                      f"{n / wall:>8.0f} {len(dataset):>8}", flush=True)
                (cwall, ccpu), (again, counts) = timed(medgpt_prepare, path, cfg, settings, tokenizer)
                assert counts["data_cache"] == "hit" and len(again) == len(dataset)
                print(f"{n:>8} {f'medgpt cached num_proc={num_proc}':<22} {cwall:>8.2f} {ccpu:>8.2f} "
                      f"{n / cwall:>8.0f} {len(again):>8}", flush=True)
        if (n, "medicalgpt") in results and (n, "medgpt1") in results:
            print(f"name=data_prep records={n} tokenizer={options.tokenizer} speedup_first_run_1proc="
                  f"{results[(n, 'medicalgpt')] / results[(n, 'medgpt1')]:.2f} (wall) "
                  f"{results[(n, 'medicalgpt_cpu')] / results[(n, 'medgpt1_cpu')]:.2f} (cpu)", flush=True)
    sizes = sorted({n for n, mode in results if mode == "medgpt1"})
    if len(sizes) > 1:
        print(f"scaling_exponent_wall={slope(sizes, [results[(n, 'medgpt1')] for n in sizes]):.2f}")


if __name__ == "__main__":
    main()
