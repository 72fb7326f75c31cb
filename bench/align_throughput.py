"""Preference-stage throughput: MedicalGPT's configuration vs medgpt's default, for DPO, ORPO, KTO and RM, on the same
tiny model, the same records (MedicalGPT's dpo_zh_500.jsonl, normalised by medgpt), the same batches of token ids
(each trainer's own collator and seeded random order) and the same number of steps, one thread, the modes taking
turns a step at a time (as bench/sft_throughput.py). Prints a table and one final `name=value ...` line.

    OMP_NUM_THREADS=1 python bench/align_throughput.py                      # tiny Qwen3 (151,669-token vocabulary)
    OMP_NUM_THREADS=1 python bench/align_throughput.py --model tiny         # medgpt's tiny model (1,024 tokens)
    OMP_NUM_THREADS=1 python bench/align_throughput.py --stages dpo --modes a_medicalgpt,b_default,b_precompute

Modes:
- a_medicalgpt: the TRL trainer with its defaults, as MedicalGPT's dpo_training.py / orpo_training.py /
  reward_modeling.py drive it: random order, a frozen reference copy (full fine-tuning), full-vocabulary logits at
  every position (DPO/KTO: TRL <= 0.x's logits -> log-softmax -> gather, which the TRL MedicalGPT pins computes;
  TRL 1.16 patches a tiled head in, which this mode replaces back; ORPO computes full logits in TRL 1.16 too)
- a_trl: the TRL 1.16 trainer unchanged (DPO/KTO: TRL's tiled `fused_lm_head`, every position scored on CPU)
- b_default: medgpt's trainer (medgpt.stages.<stage>: labelled positions only through medgpt.training.fused_loss)
- b_budget (DPO): b_default with token-budget batches of pairs (medgpt.training.batching.token_budget_batches over
  prompt + longer answer, a budget of batch x max length per step: more short pairs, fewer long ones, seeded
  random megabatches sorted by length), built in this script: not wired into stage=dpo (see docs/performance.md)
- b_precompute: b_default with `precompute_ref_log_probs=true` (DPO/KTO; the reference's pass before training is
  timed separately and reported as `precompute s`)

One step = the trainer's own `training_step` (forward, loss, backward) + an AdamW step. Tokens/s counts non-padding
tokens of the batches the trainer's collator built (every attention mask in the batch). Peak memory: the largest
of the timed steps' batches in a fresh process per mode (VmHWM).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
SAMPLES = Path(__file__).resolve().parents[1] / "../shared/data/medicalgpt-samples/dpo_zh_500.jsonl"
MODES = ("a_medicalgpt", "a_trl", "b_default", "b_precompute")
STAGES = ("dpo", "orpo", "kto", "rm")


def records(count: int):
    from medgpt.data.formats import sharegpt_preference

    out = []
    with open(SAMPLES.resolve(), encoding="utf-8") as f:
        for line in f:
            out.append(sharegpt_preference(json.loads(line)))
            if len(out) == count:
                break
    return out


def model_folder(name: str) -> str:
    if name == "qwen3":
        from medgpt.modeling.official import tiny_model_dir

        return str(tiny_model_dir("qwen3"))
    from medgpt.modeling.tiny import tiny_path

    return str(tiny_path())


def full_logits_head(model):
    """Bench only: `model(..., labels, fused_lm_head=True)` answered from full-vocabulary logits at every position
    (what TRL's DPO/KTO trainers computed before their fused head), with the metrics those trainers log."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    original = type(model).forward

    @functools.wraps(original)
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            return original(self, *args, labels=labels, **kwargs)
        kwargs["use_cache"] = False
        logits = original(self, *args, **kwargs).logits[:, :-1].float()
        targets = labels[:, 1:]
        mask = targets != -100
        logp_all = torch.log_softmax(logits, dim=-1)
        log_probs = logp_all.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2) * mask
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1) * mask
            mean_logits = logits.mean(-1) * mask
            is_top1 = (logits.argmax(-1) == targets) & mask
        return FusedCausalLMOutput(loss=-log_probs.sum() / mask.sum().clamp(min=1), log_probs=log_probs,
                                   entropy=entropy, mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)


def build(stage: str, mode: str, folder: str, rows, batch: int, max_length: int, out_dir: str):
    """(trainer, seconds spent before training: the reference precompute where there is one)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.stages import dpo, kto, orpo
    from medgpt.stages.dpo import preference_dataset

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = dict(output_dir=out_dir, per_device_train_batch_size=batch, learning_rate=5e-6, report_to=[],
                  use_cpu=True, seed=0, logging_steps=1000, save_strategy="no", dataloader_num_workers=0,
                  max_length=max_length)
    if stage == "rm":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        return RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=preference_dataset(rows),
                             processing_class=tokenizer), 0.0
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    started = time.perf_counter()
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        cls = ORPOTrainer if mode.startswith("a_") else orpo.pair_head_trainer(
            ORPOTrainer, nll="sequence", average=lambda t: True, padding="padding_value", shifted_logits=True)
        return cls(model=model, args=ORPOConfig(**common), train_dataset=preference_dataset(rows),
                   processing_class=tokenizer), 0.0
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    precompute = mode == "b_precompute"
    if stage == "dpo":
        base, config, data = DPOTrainer, DPOConfig, preference_dataset(rows)
        metrics = ("entropy", "mean_logits", "is_top1")
    else:
        base, config, data = KTOTrainer, KTOConfig, kto.Dataset.from_list(kto.unpaired_rows(rows))
        metrics = ("entropy", "mean_logits")
    args = config(**common, precompute_ref_log_probs=precompute)
    kwargs = dict(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
    if mode.startswith("a_"):
        trainer = base(**kwargs)
        if mode == "a_medicalgpt":
            full_logits_head(model)
            full_logits_head(ref)
    else:
        trainer = dpo.labelled_head_trainer(base, metrics=metrics)(**kwargs, labelled_head=True)
    return trainer, (time.perf_counter() - started if precompute else 0.0)


def counts(inputs) -> tuple:
    """(non-padding tokens, padded tokens) of a collated batch: every attention mask in it."""
    real = padded = 0
    for key, value in inputs.items():
        if key.endswith("attention_mask") and hasattr(value, "sum"):
            real += int(value.sum())
            padded += value.numel()
    return real, padded


def token_budget_pairs(trainer, batch: int, max_length: int, steps: int) -> list:
    """DPO batches whose padded size (pairs x longest row) fits batch x max_length, collated by the trainer's own
    collator (bench only)."""
    import random

    from medgpt.training.batching import token_budget_batches

    data = trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    lengths = [min(max_length, len(p) + max(len(c), len(r)))
               for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
    plan = token_budget_batches(lengths, batch * max_length, random.Random(0))
    return [trainer.data_collator([data[i] for i in plan[k % len(plan)]]) for k in range(steps)]


def prepare(stage, mode, folder, rows, batch, max_length, steps):
    import torch

    out_dir = tempfile.mkdtemp(prefix=f"align-{stage}-{mode}-")
    trainer, precompute_s = build(stage, mode, folder, rows, batch, max_length, out_dir)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before its training_step calls
    batches = token_budget_pairs(trainer, batch, max_length, steps) if mode == "b_budget" else []
    while len(batches) < steps:  # the trainer's own loader (seeded random order), repeated if it is short
        batches += list(trainer.get_train_dataloader())[:steps - len(batches)]
    trainer.model.train()
    return {"stage": stage, "mode": mode, "trainer": trainer, "batches": batches, "precompute_s": precompute_s,
            "optimizer": trainer.optimizer, "torch": torch}


def step(state, inputs):
    trainer = state["trainer"]
    loss = trainer.training_step(trainer.model, inputs)
    state["optimizer"].step()
    state["optimizer"].zero_grad(set_to_none=True)
    return float(loss)


def peak_of(stage, mode, args) -> float:
    """Run a mode's two largest timed batches in this (fresh) process; the peak resident memory, GB."""
    import torch

    torch.set_num_threads(1)
    state = prepare(stage, mode, model_folder(args.model), records(args.records), args.batch, args.max_length,
                    args.warmup + args.steps)
    for i in sorted(range(len(state["batches"])), key=lambda i: counts(state["batches"][i])[1])[-2:]:
        step(state, state["batches"][i])
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 2 ** 20, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3", choices=["qwen3", "tiny"])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--modes", default="a_medicalgpt,a_trl,b_default,b_precompute")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="pairs (KTO: examples) per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--peak-of", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        print(peak_of(*args.peak_of, args))
        return
    import datasets
    import torch

    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    folder, rows = model_folder(args.model), records(args.records)
    results = []
    for stage in args.stages.split(","):
        modes = [m for m in args.modes.split(",") if m not in ("a_trl", "b_precompute") or stage in ("dpo", "kto")]
        modes = [m for m in modes if m != "b_budget" or stage == "dpo"]
        if stage in ("orpo", "rm"):  # TRL's trainer computes full logits (ORPO) or has no LM head (RM)
            modes = [m for m in modes if m != "a_trl"]
        states = [prepare(stage, m, folder, rows, args.batch, args.max_length, args.warmup + args.steps)
                  for m in modes]
        for s in states:
            s.update(seconds=0.0, real=0, padded=0)
        for i in range(args.warmup + args.steps):  # the modes take turns, a step each
            for s in states:
                started = time.perf_counter()
                s["loss"] = step(s, s["batches"][i])
                if i >= args.warmup:
                    s["seconds"] += time.perf_counter() - started
                    real, padded = counts(s["batches"][i])
                    s["real"] += real
                    s["padded"] += padded
            print(f"{stage} step {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
        for s in states:
            peak = None
            if not args.no_peak:
                out = subprocess.run([sys.executable, __file__, "--peak-of", stage, s["mode"], "--model", args.model,
                                      "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
                                      str(args.batch), "--max-length", str(args.max_length), "--records",
                                      str(args.records)], capture_output=True, text=True)
                peak = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            results.append({"stage": stage, "mode": s["mode"], "tokens_per_s": s["real"] / s["seconds"],
                            "s_per_step": s["seconds"] / args.steps, "padding": 1 - s["real"] / s["padded"],
                            "peak_gb": peak, "precompute_s": round(s["precompute_s"], 1), "loss": s["loss"]})
            print(json.dumps(results[-1]), flush=True)
        del states
    report(results, args)


def report(results, args):
    print(f"\nmodel {args.model}, {args.batch} pairs (KTO: examples) per step, max length {args.max_length}, "
          f"{args.steps} timed steps per mode, 1 thread")
    print(f"{'stage':<5} {'mode':<13} {'tok/s':>8} {'vs a':>6} {'s/step':>7} {'padding':>8} {'peak GB':>8} "
          f"{'precompute s':>12}")
    final = []
    for r in results:
        base = next((x for x in results if x["stage"] == r["stage"] and x["mode"] == "a_medicalgpt"), None)
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else 0
        print(f"{r['stage']:<5} {r['mode']:<13} {r['tokens_per_s']:>8.0f} {ratio:>6.2f} {r['s_per_step']:>7.2f} "
              f"{r['padding']:>8.1%} {str(r['peak_gb']):>8} {r['precompute_s']:>12}")
        final.append(f"{r['stage']}_{r['mode']}_tok_s={r['tokens_per_s']:.0f} {r['stage']}_{r['mode']}_vs_a={ratio:.2f}")
    print(" ".join(final))


if __name__ == "__main__":
    main()
