"""End to end: one epoch of SFT through the real trainers, MedicalGPT's way vs `python train.py`, on the CPU
bench model of bench/sft_throughput.py (Qwen2 shape, hidden 256, 4 layers, ~4k BPE) and the 1,000 records of
`medical_sft_1K_format.jsonl`, max length 512, batch 4, 1 thread. Prints a table and one final `name=value` line.

    python bench/sft_e2e.py [--repeat 2]          # ~8 min a repeat on this machine

  medicalgpt   transformers' Trainer as supervised_finetuning.py drives it: DataCollatorForSeq2Seq (padding to
               the longest in the batch), random order, the model's own (full-logits) loss, default optimizer
  medgpt       `python train.py model.path=<bench model> data.train_files=[<sample>]` with every default

Both train on the same token ids (medgpt's tokenizer, template and truncation) for one epoch with the same batch
size, learning rate and schedule; tokens/s = the epoch's non-padding tokens / the trainer's train_runtime (model
loading and tokenization excluded). Unlike bench/sft_throughput.py's shared loop, this includes each trainer's own
per-step work (collation, logging, scheduler, clipping), which the issue's reference numbers (RECIPES.md) include.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from sft_throughput import SAMPLE, build_bench_model, sample_rows  # noqa: E402

MAX_LENGTH, BATCH, LEARNING_RATE = 512, 4, 2e-5


def model_config(cache: Path):
    from medgpt.config import compose

    return compose([f"model.path={cache}"]).model


def medicalgpt(cache: Path, out: Path, max_steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from medgpt.data.tokenize import tokenize_chats
    from medgpt.models import load_tokenizer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(model_config(cache))
    rows = sample_rows()
    columns, _ = tokenize_chats(rows, tokenizer, MAX_LENGTH, "truncate")
    columns["attention_mask"] = [[1] * len(ids) for ids in columns["input_ids"]]
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    model.config.use_cache = False
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1,
                             learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", logging_steps=5,
                             save_strategy="no", report_to=[], seed=42, use_cpu=True,
                             include_num_input_tokens_seen="non_padding", max_steps=max_steps)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    result = trainer.train()
    return {"mode": "medicalgpt", "tokens": trainer.state.num_input_tokens_seen, "records": len(rows),
            "steps": trainer.state.global_step, "train_runtime": result.metrics["train_runtime"],
            "train_loss": result.metrics["train_loss"]}


def medgpt(cache: Path, out: Path, max_steps: int) -> dict:
    subprocess.run([sys.executable, str(ROOT / "train.py"), f"model.path={cache}", f"data.train_files=[{SAMPLE}]",
                    "data.eval_files=[]", "data.eval_split=0", f"data.max_length={MAX_LENGTH}", "logger=none",
                    f"output_root={out}", "seed=42", f"stage.args.per_device_train_batch_size={BATCH}",
                    f"stage.args.learning_rate={LEARNING_RATE}", "stage.args.num_train_epochs=1",
                    f"stage.args.max_steps={max_steps}"],
                   check=True, capture_output=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (path,) = out.glob("runs/*/*/metrics.json")
    metrics = json.loads(path.read_text())
    return {"mode": "medgpt", "tokens": metrics["tokens_seen"], "records": metrics["train_records"],
            "steps": metrics["global_step"], "train_runtime": metrics["train_runtime"],
            "train_loss": metrics["train_loss"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(Path.home() / ".cache/medgpt/bench-tokenizer"))
    parser.add_argument("--max-steps", type=int, default=-1, help="stop early (a smoke test); -1: one epoch")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode, interleaved; the best is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = Path(args.cache)
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(medicalgpt(cache, Path(out), args.max_steps)))
        return
    build_bench_model(cache, sample_rows())
    runs = {"medicalgpt": [], "medgpt": []}
    for _ in range(args.repeat):  # interleaved, best of each: a slow spell of a shared machine hits neither in particular
        child = subprocess.run([sys.executable, __file__, "--child", "medicalgpt", "--cache", str(cache),
                                "--max-steps", str(args.max_steps)], check=True, capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        runs["medicalgpt"].append(json.loads(child.stdout.strip().splitlines()[-1]))
        with tempfile.TemporaryDirectory() as out:
            runs["medgpt"].append(medgpt(cache, Path(out), args.max_steps))
    results = [min(found, key=lambda r: r["train_runtime"] / r["tokens"]) for found in runs.values()]
    base = results[0]["tokens"] / results[0]["train_runtime"]
    print(f"one epoch, batch {BATCH} x max length {MAX_LENGTH}, 1 thread, best of {args.repeat}")
    print(f"{'mode':<11} {'records':>7} {'tokens':>8} {'steps':>5} {'seconds':>8} {'tok/s':>7} {'vs medicalgpt':>13} "
          f"{'loss':>6}")
    final = []
    for r in results:
        rate = r["tokens"] / r["train_runtime"]
        print(f"{r['mode']:<11} {r['records']:>7} {r['tokens']:>8} {r['steps']:>5} {r['train_runtime']:>8.1f} "
              f"{rate:>7.0f} {rate / base:>13.2f} {r['train_loss']:>6.3f}")
        final += [f"{r['mode']}_tok_s={rate:.0f}", f"{r['mode']}_vs_medicalgpt={rate / base:.2f}"]
    print(" ".join(final))


if __name__ == "__main__":
    main()
