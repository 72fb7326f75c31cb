"""Alignment-stage throughput: MedicalGPT's configuration vs medgpt's default, for DPO, ORPO, KTO, RM and GRPO, on the
same tiny model, the same records (MedicalGPT's dpo_zh_500.jsonl, normalised by medgpt; GRPO: its grpo_sample.jsonl
prompts), the same batches of token ids (each trainer's own collator and seeded random order) and the same number of
steps, one thread, the modes taking turns a step at a time (as bench/sft_throughput.py). Prints a table and one final
`name=value ...` line.

    OMP_NUM_THREADS=1 python bench/align_throughput.py                      # tiny Qwen3 (151,669-token vocabulary)
    OMP_NUM_THREADS=1 python bench/align_throughput.py --model tiny         # medgpt's tiny model (1,024 tokens)
    OMP_NUM_THREADS=1 python bench/align_throughput.py --stages dpo --modes a_medicalgpt,b_default,b_precompute
    OMP_NUM_THREADS=1 python bench/align_throughput.py --stages grpo --completion-length 512

Modes:
- a_medicalgpt: the trainer as MedicalGPT's dpo_training.py / orpo_training.py / reward_modeling.py /
  grpo_training.py drive it: random order, a frozen reference copy (full fine-tuning), full-vocabulary logits
  (DPO/KTO: at every position, TRL <= 0.x's logits -> log-softmax -> gather, which the TRL MedicalGPT pins computes;
  TRL 1.16 patches a tiled head in, which this mode replaces back; ORPO computes full logits in TRL 1.16 too; GRPO:
  at the completion positions, divided by the temperature, as TRL 0.29; RM: MedicalGPT's own Trainer subclass, two
  forward passes per pair and every sequence padded to the maximum length, `medicalgpt_reward_trainer`)
- a_trl: the TRL 1.16 trainer unchanged (DPO/KTO/GRPO: TRL's tiled `fused_lm_head`, every position scored on CPU;
  RM: TRL's RewardTrainer)
- b_default: medgpt's trainer (medgpt.stages.<stage>: labelled positions only through medgpt.training.fused_loss;
  GRPO: that head at the sampling temperature, and on a CPU medgpt.training.rollout's sampler; RM: pairs of similar
  length batched together, stage.batching=group_by_length)
- b_head (GRPO): b_default with TRL's own generation (torch.multinomial): what the head alone gains
- b_budget (DPO): b_default with token-budget batches of pairs (medgpt.training.batching.token_budget_batches over
  prompt + longer answer, a budget of batch x max length per step: more short pairs, fewer long ones, seeded
  random megabatches sorted by length), built in this script: not wired into stage=dpo (see docs/performance.md)
- b_precompute: b_default with `precompute_ref_log_probs=true` (DPO/KTO; the reference's pass before training is
  timed separately and reported as `precompute s`)

Every mode trains in fp32, as medgpt does on a CPU (TRL's configs default to bf16 autocast, which this bench ran
under before 2026-11-30's GRPO/RM runs). One step = the trainer's own `training_step` (forward, loss, backward) + an
AdamW step. Tokens/s counts non-padding tokens of the batches the trainer's collator built (every attention mask in
the batch). GRPO's step also generates its completions (per_device_train_batch_size of them, num_generations per
prompt) and scores them: its rate is completed prompts/s, its tokens/s counts completion tokens, and the step splits
into generation (`_generate`) and the rest (rewards, reference log-probs, loss, backward, AdamW). RM times a whole
epoch (its steps are cheap), so that every mode sees the same pairs. Peak memory: the largest of the timed steps'
batches in a fresh process per mode (VmHWM).
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
SAMPLES = (Path(__file__).resolve().parents[1] / "../shared/data/medicalgpt-samples").resolve()
MODES = ("a_medicalgpt", "a_trl", "b_head", "b_default", "b_precompute")
PREFERENCE = ("a_medicalgpt", "a_trl", "b_default", "b_precompute")
STAGE_MODES = {"dpo": PREFERENCE + ("b_budget",), "kto": PREFERENCE,
               "orpo": ("a_medicalgpt", "b_default"),  # TRL's ORPO trainer computes full logits: a_trl = a
               "rm": ("a_medicalgpt", "a_trl", "b_default"), "grpo": ("a_medicalgpt", "a_trl", "b_head", "b_default")}
STAGES = tuple(STAGE_MODES)


def records(count: int, stage: str = "dpo"):
    """The first `count` records of MedicalGPT's samples, normalised by medgpt: preference pairs (dpo_zh_500.jsonl),
    or question/answer prompts for GRPO (grpo_sample.jsonl, repeated when `count` exceeds its 32 records)."""
    from medgpt.data.formats import prompt_only, sharegpt_preference

    name, parse = ("grpo_sample.jsonl", prompt_only) if stage == "grpo" else ("dpo_zh_500.jsonl", sharegpt_preference)
    with open(SAMPLES / name, encoding="utf-8") as f:
        rows = [parse(json.loads(line)) for line in f]
    return [rows[i % len(rows)] for i in range(count)] if stage == "grpo" else rows[:count]


def model_folder(name: str) -> str:
    if name == "qwen3":
        from medgpt.modeling.official import tiny_model_dir

        return str(tiny_model_dir("qwen3"))
    from medgpt.modeling.tiny import tiny_path

    return str(tiny_path())


def full_logits_head(model, temperature: float = 1.0, completions_only: bool = False):
    """Bench only: `model(..., labels, fused_lm_head=True)` answered from full-vocabulary logits, as TRL computed it
    before its fused head: DPO/KTO at every position, with the metrics those trainers log; GRPO (`completions_only`,
    as TRL 0.29, MedicalGPT's pin trl>=0.29) at the completion positions (`logits_to_keep`), divided by the sampling
    temperature, with the entropy it logs."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    original = type(model).forward

    @functools.wraps(original)
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            return original(self, *args, labels=labels, **kwargs)
        kwargs["use_cache"] = False
        keep = labels.shape[1] - 1
        if completions_only:  # GRPO masks all but the last `keep` labels
            keep = labels.shape[1] - int((labels != -100).any(0).nonzero()[0])
            kwargs["logits_to_keep"] = keep + 1
        logits = original(self, *args, **kwargs).logits[:, :-1].float() / temperature
        targets = labels[:, -keep:]
        mask = targets != -100
        logp_all = torch.log_softmax(logits, dim=-1)
        log_probs = logp_all.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2) * mask
        with torch.no_grad():
            metrics = {"entropy": -(logp_all.exp() * logp_all).sum(-1) * mask}
            if not completions_only:
                metrics.update(mean_logits=logits.mean(-1) * mask, is_top1=(logits.argmax(-1) == targets) & mask)
        width = labels.shape[1] - 1 - keep  # TRL's head returns [batch, seq - 1]; GRPO reads the tail

        def full(x):
            return torch.cat([x.new_zeros(x.shape[0], width), x], 1)

        return FusedCausalLMOutput(loss=-log_probs.sum() / mask.sum().clamp(min=1), log_probs=full(log_probs),
                                   label_mask=full(mask), **{k: full(v) for k, v in metrics.items()})

    model.forward = types.MethodType(forward, model)


def medicalgpt_reward_trainer(folder, tokenizer, rows, batch: int, max_length: int, out_dir: str):
    """Bench only: MedicalGPT's reward_modeling.py: its own Trainer subclass scoring chosen and rejected in two
    forward passes, and its collator padding every sequence to `max_length` (`padding="max_length"`,
    full_max_length = max_source_length + max_target_length); the same token ids as TRL's RewardTrainer."""
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
    from trl import RewardConfig, RewardTrainer

    from medgpt.stages.dpo import preference_dataset

    class RewardTrainerMedicalGPT(Trainer):  # reward_modeling.py's compute_loss, verbatim
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            rewards_chosen = model(input_ids=inputs["input_ids_chosen"],
                                   attention_mask=inputs["attention_mask_chosen"])[0]
            rewards_rejected = model(input_ids=inputs["input_ids_rejected"],
                                     attention_mask=inputs["attention_mask_rejected"])[0]
            return -torch.nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()

    def collate(features):  # reward_modeling.py's RewardDataCollatorWithPadding(padding="max_length")
        batch = {}
        for side in ("chosen", "rejected"):
            padded = tokenizer.pad([{"input_ids": f[f"{side}_ids"]} for f in features], padding="max_length",
                                   max_length=max_length, return_tensors="pt")
            batch[f"input_ids_{side}"], batch[f"attention_mask_{side}"] = padded["input_ids"], padded["attention_mask"]
        return batch

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenized = RewardTrainer(model=model, args=RewardConfig(output_dir=out_dir, max_length=max_length, report_to=[],
                                                             use_cpu=True, bf16=False),
                              train_dataset=preference_dataset(rows),
                              processing_class=tokenizer).train_dataset
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=batch, learning_rate=5e-6, report_to=[],
                             use_cpu=True, bf16=False, seed=0, logging_steps=1000, save_strategy="no",
                             dataloader_num_workers=0, remove_unused_columns=False)
    return RewardTrainerMedicalGPT(model=model, args=args, train_dataset=tokenized, data_collator=collate)


def build_grpo(mode: str, folder: str, rows, args, out_dir: str):
    """GRPO as MedicalGPT's grpo_training.py runs it (TRL's GRPOTrainer, its defaults, beta 0.001, a reference copy
    for full fine-tuning) or as medgpt's stage builds it; the same prompts, rewards and sampling seed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from medgpt.stages.grpo import prompt_dataset
    from medgpt.stages.grpo import trainer_class as medgpt_grpo
    from medgpt.training.rewards import answer_accuracy, think_answer_format
    from medgpt.training.rollout import applies, cpu_rollout

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=args.grpo_batch,
                        num_generations=args.num_generations, max_completion_length=args.completion_length,
                        beta=0.001, learning_rate=1e-6, report_to=[], use_cpu=True, bf16=False, seed=0,
                        logging_steps=1000, save_strategy="no", dataloader_num_workers=0)
    cls = GRPOTrainer if mode.startswith("a_") else medgpt_grpo(config)
    rollout = cpu_rollout if mode == "b_default" and applies(config, tokenizer, cuda=False) else None
    trainer = cls(model=model, reward_funcs=[answer_accuracy, think_answer_format], args=config,
                  train_dataset=prompt_dataset(rows), processing_class=tokenizer, rollout_func=rollout)
    if mode == "a_medicalgpt":
        for model in (trainer.model, trainer.ref_model):
            if model is not None:
                full_logits_head(model, config.temperature, completions_only=True)
    return trainer


def build(stage: str, mode: str, folder: str, rows, batch: int, max_length: int, out_dir: str):
    """(trainer, seconds spent before training: the reference precompute where there is one)."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.stages import dpo, kto, orpo, rm
    from medgpt.stages.dpo import preference_dataset

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = dict(output_dir=out_dir, per_device_train_batch_size=batch, learning_rate=5e-6, report_to=[],
                  use_cpu=True, bf16=False, seed=0, logging_steps=1000, save_strategy="no", dataloader_num_workers=0,
                  max_length=max_length)
    if stage == "rm" and mode == "a_medicalgpt":
        return medicalgpt_reward_trainer(folder, tokenizer, rows, batch, max_length, out_dir), 0.0
    if stage == "rm":  # a_trl: TRL's RewardTrainer as is; b_default: medgpt's (stage.batching=group_by_length)
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        kwargs = dict(model=model, args=RewardConfig(**common), train_dataset=preference_dataset(rows),
                      processing_class=tokenizer)
        if mode == "a_trl":
            return RewardTrainer(**kwargs), 0.0
        return rm.trainer_class()(**kwargs, batching="group_by_length", batch_seed=0), 0.0
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
        base, config, data = KTOTrainer, KTOConfig, Dataset.from_list(kto.unpaired_rows(rows))
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
    for key, value in (inputs.items() if isinstance(inputs, dict) else ()):  # GRPO: prompt records, counted apart
        if "attention_mask" in key and hasattr(value, "sum"):
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


def timed_rollouts(trainer, state):
    """Bench instrumentation: seconds spent generating (`_generate`) and completion tokens produced, per GRPO step."""
    generate, score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            state["generate_s_step"] += time.perf_counter() - started

    def counted(*args, **kwargs):
        out = score(*args, **kwargs)
        state["completion_tokens_step"] += int(out["completion_mask"].sum())
        state["prompts_step"] += out["completion_mask"].shape[0] // trainer.num_generations
        return out

    trainer._generate, trainer._generate_and_score_completions = timed_generate, counted


def prepare(stage, mode, folder, rows, batch, max_length, steps, args=None):
    import torch

    out_dir = tempfile.mkdtemp(prefix=f"align-{stage}-{mode}-")
    state = {"stage": stage, "mode": mode, "generate_s_step": 0.0, "completion_tokens_step": 0, "prompts_step": 0}
    if stage == "grpo":
        trainer, precompute_s = build_grpo(mode, folder, rows, args, out_dir), 0.0
        timed_rollouts(trainer, state)
    else:
        trainer, precompute_s = build(stage, mode, folder, rows, batch, max_length, out_dir)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before its training_step calls
    batches = token_budget_pairs(trainer, batch, max_length, steps) if mode == "b_budget" else []
    if stage == "rm":  # cheap steps: a whole epoch after the warm-up, so that every mode sees the same pairs
        epoch = list(trainer.get_train_dataloader())
        warmup = epoch[len(epoch) - args.warmup:] if args.warmup else []
        batches, steps = warmup + epoch, len(warmup) + len(epoch)
    while len(batches) < steps:  # the trainer's own loader (seeded random order), repeated if it is short
        batches += list(trainer.get_train_dataloader())[:steps - len(batches)]
    trainer.model.train()
    state.update(trainer=trainer, batches=batches, precompute_s=precompute_s, optimizer=trainer.optimizer, torch=torch)
    return state


def step(state, inputs):
    trainer = state["trainer"]
    loss = trainer.training_step(trainer.model, inputs, None)
    state["optimizer"].step()
    state["optimizer"].zero_grad(set_to_none=True)
    return float(loss)


def peak_of(stage, mode, args) -> float:
    """Run a mode's two largest timed batches in this (fresh) process; the peak resident memory, GB."""
    import torch

    torch.set_num_threads(1)
    state = prepare(stage, mode, model_folder(args.model), records(args.records, stage), args.batch, args.max_length,
                    args.warmup + args.steps, args)
    for i in sorted(range(len(state["batches"])), key=lambda i: counts(state["batches"][i])[1])[-2:]:
        step(state, state["batches"][i])
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 2 ** 20, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3", choices=["qwen3", "tiny"])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--grpo-batch", type=int, default=4, help="GRPO completions per step (MedicalGPT: 4)")
    parser.add_argument("--num-generations", type=int, default=4, help="GRPO group size (MedicalGPT: 4)")
    parser.add_argument("--completion-length", type=int, default=128, help="GRPO max_completion_length")
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
    folder = model_folder(args.model)
    results = []
    for stage in args.stages.split(","):
        rows = records(args.records, stage)
        modes = [m for m in args.modes.split(",") if m in STAGE_MODES[stage]]
        states = [prepare(stage, m, folder, rows, args.batch, args.max_length, args.warmup + args.steps, args)
                  for m in modes]
        total = min(len(s["batches"]) for s in states)  # RM: its epoch (+ 1 warm-up step)
        timed = total - args.warmup
        for s in states:
            s.update(seconds=0.0, real=0, padded=0, generate_s=0.0, completion_tokens=0, prompts=0)
        for i in range(total):  # the modes take turns, a step each
            for s in states:
                s.update(generate_s_step=0.0, completion_tokens_step=0, prompts_step=0)
                started = time.perf_counter()
                s["loss"] = step(s, s["batches"][i])
                if i >= args.warmup:
                    s["seconds"] += time.perf_counter() - started
                    real, padded = counts(s["batches"][i])
                    s["real"] += real
                    s["padded"] += padded
                    s["generate_s"] += s["generate_s_step"]
                    s["completion_tokens"] += s["completion_tokens_step"]
                    s["prompts"] += s["prompts_step"]
            print(f"{stage} step {i + 1}/{total}", file=sys.stderr, flush=True)
        for s in states:
            peak = None
            if not args.no_peak:
                out = subprocess.run([sys.executable, __file__, "--peak-of", stage, s["mode"]] + sys.argv[1:],
                                     capture_output=True, text=True)
                peak = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            result = {"stage": stage, "mode": s["mode"], "s_per_step": s["seconds"] / timed, "peak_gb": peak,
                      "precompute_s": round(s["precompute_s"], 1), "loss": s["loss"]}
            if stage == "grpo":  # rollouts: completed prompts/s, generation vs the rest (scoring, loss, backward)
                result.update(prompts_per_s=s["prompts"] / s["seconds"], tokens_per_s=s["completion_tokens"] /
                              s["seconds"], rollout_tokens_per_s=s["completion_tokens"] / s["generate_s"],
                              generate_s_per_step=s["generate_s"] / timed,
                              train_s_per_step=(s["seconds"] - s["generate_s"]) / timed, padding=None)
            else:
                result.update(tokens_per_s=s["real"] / s["seconds"], padding=1 - s["real"] / s["padded"])
            results.append(result)
            print(json.dumps(results[-1]), flush=True)
        del states
    report(results, args)


def report(results, args):
    print(f"\nmodel {args.model}, {args.batch} pairs (KTO: examples) per step, max length {args.max_length}; GRPO "
          f"{args.grpo_batch} completions per step, groups of {args.num_generations}, up to {args.completion_length} "
          f"tokens; {args.steps} timed steps per mode (RM: an epoch), 1 thread")
    print(f"{'stage':<5} {'mode':<13} {'tok/s':>8} {'vs a':>6} {'s/step':>7} {'padding':>8} {'peak GB':>8} "
          f"{'precompute s':>12}   GRPO: prompts/s, rollout tok/s, generate s/step, rest s/step")
    final = []
    for r in results:
        base = next((x for x in results if x["stage"] == r["stage"] and x["mode"] == "a_medicalgpt"), None)
        rate = "prompts_per_s" if r["stage"] == "grpo" else "tokens_per_s"  # GRPO's target: completed prompts/s
        ratio = r[rate] / base[rate] if base else 0
        padding = "" if r["padding"] is None else f"{r['padding']:.1%}"
        grpo = (f"   {r['prompts_per_s']:.3f}, {r['rollout_tokens_per_s']:.0f}, {r['generate_s_per_step']:.2f}, "
                f"{r['train_s_per_step']:.2f}") if r["stage"] == "grpo" else ""
        print(f"{r['stage']:<5} {r['mode']:<13} {r['tokens_per_s']:>8.0f} {ratio:>6.2f} {r['s_per_step']:>7.2f} "
              f"{padding:>8} {str(r['peak_gb']):>8} {r['precompute_s']:>12}{grpo}")
        final.append(f"{r['stage']}_{r['mode']}_{rate}={r[rate]:.3f} {r['stage']}_{r['mode']}_vs_a={ratio:.2f}")
    print(" ".join(final))


if __name__ == "__main__":
    main()
