"""Peak memory of one SFT step and one DPO step at a real vocabulary: a tiny random model (2 layers, hidden 64) around
the official Qwen3 tokenizer (151,669 tokens, tied embeddings; medgpt.modeling.official.tiny_model_dir("qwen3")),
token budgets of 4 x 1024 and 4 x 4096, for three losses:

- medicalgpt: full logits, as MedicalGPT's scripts train (SFT: the model's own loss over every position; DPO: logits
  of every position, log-softmax, gather, as TRL's DPOTrainer did before its fused head)
- today: medgpt before issue 18 (SFT: logits of the labelled positions at once; DPO: TRL 1.16's fused head, which on
  a device without Triton scores every position in tiles of 4096 x 32768 logits)
- default: medgpt's loss now (medgpt.training.fused_loss: labelled positions only, a chunk of rows at a time; DPO
  through medgpt.training.losses.add_labelled_lm_head)

One step = forward, backward and an AdamW step (DPO: plus the reference model's forward, a frozen copy, as for full
fine-tuning). Each measurement runs in a fresh process: peak resident memory (VmHWM) on CPU,
torch.cuda.max_memory_allocated on CUDA. Token ids are random (seeded), the same for every mode; a quarter of each
SFT row and half of each DPO row is prompt (no label).

    OMP_NUM_THREADS=1 python bench/memory.py                       # CPU, both stages, both budgets, all modes
    python bench/memory.py --device cuda --stages sft --budgets 4096
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("medicalgpt", "today", "default")
ROWS = 4


def model_and_inputs(stage: str, budget: int, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    from medgpt.modeling.official import tiny_model_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen3"), dtype=torch.float32).to(device)
    model.config.use_cache = False
    model.train()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    if stage == "sft":  # 4 rows of `budget` tokens: the token budget 4 x budget, filled
        ids = torch.randint(0, vocab, (ROWS, budget), generator=g)
        labels = ids.clone()
        labels[:, :budget // 4] = -100
    else:  # 4 pairs: chosen rows then rejected rows (TRL's concatenated batch), prompt = the first half of each
        prompt = torch.randint(0, vocab, (ROWS, budget // 2), generator=g)
        answers = torch.randint(0, vocab, (2 * ROWS, budget - budget // 2), generator=g)
        ids = torch.cat([prompt.repeat(2, 1), answers], dim=1)
        labels = ids.clone()
        labels[:, :budget // 2] = -100
    return model, {"input_ids": ids.to(device), "labels": labels.to(device)}


def today_labelled_loss(model, inputs):
    """medgpt's SFT loss before issue 18: every labelled position's logits at once."""
    from unittest import mock

    import torch.nn.functional as F

    from medgpt.training import losses

    def all_at_once(hidden, weight, bias, targets):
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")

    with mock.patch.object(losses, "linear_cross_entropy", all_at_once):
        return losses.labelled_positions_loss(model, inputs)


def sft_loss(mode: str, model, inputs):
    from medgpt.training.losses import labelled_positions_loss

    if mode == "medicalgpt":
        return model(**inputs).loss
    if mode == "today":
        return today_labelled_loss(model, inputs)
    return labelled_positions_loss(model, inputs)


def full_logits_log_probs(model, inputs):
    import torch

    logits = model(input_ids=inputs["input_ids"]).logits[:, :-1].float()
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logps = torch.log_softmax(logits, dim=-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (logps * mask).sum(1)


def dpo_setup(mode: str, model):
    """The policy and its frozen reference copy, with the LM head the mode uses."""
    from trl.trainer.utils import add_fused_lm_head

    from medgpt.training.losses import add_labelled_lm_head

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    if mode != "medicalgpt":  # as DPOTrainer.__init__ in TRL 1.16
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        add_fused_lm_head(ref)
    if mode == "default":  # as medgpt.stages.dpo's trainer, after TRL's
        add_labelled_lm_head(model, metrics=("entropy", "mean_logits", "is_top1"))
        add_labelled_lm_head(ref)
    return ref


def dpo_loss(mode: str, model, ref, inputs, beta: float = 0.1):
    """DPOTrainer's sigmoid loss (TRL 1.16 `_compute_loss`): summed completion log-probs, policy and reference."""
    import torch
    import torch.nn.functional as F

    if mode == "medicalgpt":
        logps = full_logits_log_probs(model, inputs)
        with torch.no_grad():
            ref_logps = full_logits_log_probs(ref, inputs)
    else:
        logps = model(**inputs, fused_lm_head=True).log_probs.sum(1)
        with torch.no_grad():
            ref_logps = ref(**inputs, fused_lm_head=True).log_probs.sum(1)
    chosen, rejected = (logps - ref_logps).chunk(2)
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


def one_step(stage: str, mode: str, budget: int, device: str) -> dict:
    import torch

    torch.set_num_threads(1)
    model, inputs = model_and_inputs(stage, budget, device)
    ref = dpo_setup(mode, model) if stage == "dpo" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    started = time.perf_counter()
    loss = sft_loss(mode, model, inputs) if stage == "sft" else dpo_loss(mode, model, ref, inputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        peak, before = torch.cuda.max_memory_allocated() / 2 ** 30, base / 2 ** 30
    else:
        status = Path("/proc/self/status").read_text()
        peak, before = int(status.split("VmHWM:")[1].split()[0]) / 2 ** 20, None
    return {"stage": stage, "mode": mode, "budget": budget, "peak_gb": round(peak, 3), "loss": round(loss.item(), 6),
            "seconds": round(time.perf_counter() - started, 2),
            "model_gb": None if before is None else round(before, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--budgets", default="1024,4096", help="tokens per row; 4 rows (DPO: 4 pairs)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--limit-gb", type=float, default=12.0,
                        help="CPU: address-space cap of each measuring process (a shared machine must not swap or "
                             "invoke the OOM killer); a mode that needs more fails with '> limit'")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a measuring process may run")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "MODE", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, mode, budget = args.child
        if args.device == "cpu" and args.limit_gb:
            import resource

            cap = int(args.limit_gb * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(one_step(stage, mode, int(budget), args.device)))
        return
    results = []
    for stage in args.stages.split(","):
        for budget in map(int, args.budgets.split(",")):
            for mode in args.modes.split(","):
                try:
                    out = subprocess.run([sys.executable, __file__, "--device", args.device, "--limit-gb",
                                          str(args.limit_gb), "--child", stage, mode, str(budget)],
                                         capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    results.append({"stage": stage, "mode": mode, "budget": budget, "peak_gb": None,
                                    "error": f"over {args.timeout:g} s"})
                    print(json.dumps(results[-1]), flush=True)
                    continue
                if out.returncode:
                    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                    over = "memory" in tail.lower() or "alloc" in tail.lower()
                    results.append({"stage": stage, "mode": mode, "budget": budget,
                                    "peak_gb": f"> {args.limit_gb:g}" if over else None, "error": tail[:120]})
                else:
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
    print(f"\n{'stage':<5} {'tokens':>11} {'mode':<11} {'peak GB':>8} {'step s':>7} {'loss':>10}")
    for r in results:
        tokens = f"{ROWS} x {r['budget']}"
        print(f"{r['stage']:<5} {tokens:>11} {r['mode']:<11} "
              f"{r['peak_gb'] if r['peak_gb'] is not None else 'failed':>8} {r.get('seconds', ''):>7} "
              f"{r.get('loss', r.get('error', '')):>10}")
    print(" ".join(f"{r['stage']}_{r['budget']}_{r['mode']}_peak_gb={r['peak_gb']}" for r in results))


if __name__ == "__main__":
    main()
