"""SFT throughput: MedicalGPT's batching vs length grouping vs our default and other options, same model, data,
token budget per step and number of steps. Prints a table and one final `name=value ...` line.

    python bench/sft_throughput.py                    # CPU: Qwen2 shape hidden 256, 4 layers, ~4k BPE, max len 512
    python bench/sft_throughput.py --device cuda      # GPU: Qwen2.5-1.5B shape, vocab 151,936, bf16, max len 1024
    python bench/sft_throughput.py --epoch --modes a_medicalgpt,b_group_len,c_default
                                                      # each mode trains one whole epoch: every record once, so the
                                                      # ratios carry no sampling noise (~17 min on CPU)

Modes (each a fresh model with the same seed, AdamW, one plain training loop shared by all modes, so only the
batching / attention / loss path differs). On CPU all modes train in one process, a step of each in turn, each
step timed on its own, so the machine's drift falls on every mode alike; peak memory comes from a fresh process
per mode that trains its largest batches. (a), (b) and packing take the loss from the full logits, as the
transformers Trainer does; medgpt's token-budget modes project only labelled positions (medgpt.training.losses, its SFT
default) unless a mode says "fused": TRL's fused LM head (stage.fused_lm_head=true; where TRL is not installed,
e.g. a bare GPU box, an equivalent chunked loss stands in):
  a_medicalgpt   random order, dynamic padding to the longest in the batch (supervised_finetuning.py's batches)
  b_group_len    transformers' group_by_length batches (random megabatches sorted by length)
  c_default      medgpt's default: token-budget batches (rows x longest <= batch size x max length), right
                 padding without an attention mask (causal attention never looks at the pads after a token)
  c_fused        c_default with the fused LM head
  c_no_skip      c_default without the last-layer skip of medgpt.training.losses (the loss before it; not a default mode)
  c_group_len    medgpt with stage.batching=group_by_length: (b)'s batches, right padding without a mask
  d_packing      samples packed into max-length rows, positions restarting per sample (padding-free)
  d_varlen       d_packing with medgpt's variable-length flash attention (GPU only; medgpt.modeling.attention)
GPU only:
  j_compiled     d_varlen with torch.compile (not in the default list: recompiles as sample boundaries change)
  i_best         packing into 4x as many rows, varlen attention, fused head, activation checkpointing
  f_big          token budget 4x, fused head, activation checkpointing
  g_a_32x1024    a_medicalgpt at batch 32 x 1024 (MedicalGPT OOMs there on an H200)
  h_c_32x1024    c_default at a 32 x 1024 token budget, with activation checkpointing
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from medgpt.config import sample_file

SAMPLE = Path(sample_file("medical_sft_1K_format.jsonl"))  # $MEDGPT_SAMPLES, else ../shared/data/medicalgpt-samples
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 spec sheets
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True)


def sample_rows():
    """The 1,000 normalised conversations of the SFT sample."""
    from medgpt.data.loading import expand_files, load_split

    if not SAMPLE.is_file():
        raise SystemExit(f"MedicalGPT sample data not found: {SAMPLE}: run scripts/fetch_samples.sh "
                         "(or set MEDGPT_SAMPLES)")
    return load_split(expand_files([str(SAMPLE)]), accepted=["sharegpt"]).rows


def build_bench_model(cache: Path, rows) -> None:
    """The CPU bench model in `cache`, once: a ~4k BPE tokenizer built like model=tiny, trained on the rows' text."""
    from medgpt.modeling.tiny import build_tiny

    if not (cache / "tokenizer.json").exists():
        texts = [m["content"] for r in rows for m in r["messages"]]
        build_tiny(cache, texts, vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2)


def build_tokenizer_and_data(max_length: int, cache: Path):
    """The bench model's tokenizer and the sample tokenized with it."""
    from transformers import AutoTokenizer

    from medgpt.data.tokenize import tokenize_chats

    rows = sample_rows()
    build_bench_model(cache, rows)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    columns, _ = tokenize_chats(rows, tokenizer, max_length, "truncate")
    return tokenizer, columns


def make_model(device: str, cache: Path, varlen: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if device == "cpu":
        return AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32, attn_implementation="sdpa")
    config = Qwen2Config(**QWEN25_15B)
    config._attn_implementation = "sdpa"
    if varlen:
        from medgpt.modeling.attention import NAME, register

        register()
        config._attn_implementation = NAME
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    return model


PACKED_MODES = ("d_packing", "d_varlen", "i_best", "j_compiled")
VARLEN_MODES = ("d_varlen", "i_best", "j_compiled")
OURS = ("c_default", "c_no_skip", "c_fused", "c_group_len", "f_big", "h_c_32x1024")  # batched as medgpt trains
CHECKPOINTED_MODES = ("f_big", "h_c_32x1024", "i_best")
FUSED_MODES = ("c_fused", "f_big", "h_c_32x1024", "i_best")


def pack_rows(lengths, row_len: int, rng: random.Random):
    """Best-fit-decreasing packing of samples into rows of row_len tokens (as TRL's bfd strategy)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, space = [], []
    for i in order:
        fits = [r for r in range(len(rows)) if space[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: space[r])
            rows[best].append(i)
            space[best] -= lengths[i]
        else:
            rows.append([i])
            space.append(row_len - lengths[i])
    rng.shuffle(rows)
    return rows


def batches_for(mode: str, lengths, batch: int, max_length: int, rng: random.Random):
    from medgpt.training.batching import length_grouped_batches, random_batches, token_budget_batches

    if mode in ("a_medicalgpt", "g_a_32x1024"):
        return random_batches(len(lengths), 32 if mode == "g_a_32x1024" else batch, rng)
    if mode in ("b_group_len", "c_group_len"):
        return length_grouped_batches(lengths, batch, rng)
    if mode in ("c_default", "c_no_skip", "c_fused"):
        return token_budget_batches(lengths, batch * max_length, rng)
    if mode == "f_big":
        return token_budget_batches(lengths, 4 * batch * max_length, rng)
    if mode == "h_c_32x1024":
        return token_budget_batches(lengths, 32 * 1024, rng)
    if mode in PACKED_MODES:
        rows = pack_rows(lengths, max_length, rng)
        per_step = 4 * batch if mode == "i_best" else batch
        return [rows[i:i + per_step] for i in range(0, len(rows), per_step)]  # each item: a list of packed rows
    raise ValueError(mode)


def collate(mode: str, columns, batch_indices, pad_id: int, device: str):
    import torch

    from medgpt.training.batching import drop_causal_padding_mask, pad_collate

    if mode not in PACKED_MODES:
        examples = [{"input_ids": columns["input_ids"][i], "labels": columns["labels"][i]} for i in batch_indices]
        out = pad_collate(examples, pad_id)
        real = int(out["attention_mask"].sum())
        if mode in OURS:  # as medgpt's SFT trainer: right padding needs no mask under causal attention
            out = drop_causal_padding_mask(out)
        return {k: v.to(device) for k, v in out.items()}, real, out["input_ids"].numel()
    ids, labels, positions = [], [], []
    for row in batch_indices:
        ids.append([t for i in row for t in columns["input_ids"][i]])
        labels.append([t for i in row for t in columns["labels"][i]])
        positions.append([p for i in row for p in range(len(columns["input_ids"][i]))])
    longest = max(map(len, ids))
    real = sum(map(len, ids))
    for seq, fill in ((ids, pad_id), (labels, -100), (positions, 0)):
        for r in seq:
            r += [fill] * (longest - len(r))
    batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}
    batch = {k: v.to(device) for k, v in batch.items()}
    if mode in VARLEN_MODES:
        from medgpt.modeling.attention import cu_seqlens_from_positions

        cu, most = cu_seqlens_from_positions(torch.tensor(positions))
        batch.update(cu_seq_lens_q=cu.to(device), cu_seq_lens_k=cu.to(device), max_length_q=most, max_length_k=most)
    return batch, real, longest * len(ids)


def chunked_loss(model, inputs, chunk_size: int = 4096):
    """Stand-in for TRL's fused LM head where TRL is not installed: project only labelled positions, a chunk at a
    time, each chunk recomputed in backward."""
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    body = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = model.model(**body, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:].reshape(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = targets != -100
    states, targets = states[keep], targets[keep]
    weight = model.lm_head.weight

    def piece(h, t):
        return F.cross_entropy((h @ weight.T).float(), t, reduction="sum")

    total = sum(checkpoint(piece, states[i:i + chunk_size], targets[i:i + chunk_size], use_reentrant=False)
                for i in range(0, targets.numel(), chunk_size))
    return total / max(int(keep.sum()), 1)


def loss_function(mode: str, model):
    if mode == "c_no_skip":
        from unittest import mock

        from medgpt.training import losses

        def without_skip(inputs):
            with mock.patch.object(losses, "last_layer_position_wise", lambda inner: []):
                return losses.labelled_positions_loss(model, inputs)

        return without_skip, "labelled, no skip"
    if mode in OURS and mode not in FUSED_MODES:  # as medgpt's SFT trainer: labelled positions only
        from medgpt.training.losses import labelled_positions_loss

        return (lambda inputs: labelled_positions_loss(model, inputs)), "labelled positions"
    if mode not in FUSED_MODES:
        return (lambda inputs: model(**inputs, use_cache=False).loss), "full logits"
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:
        return (lambda inputs: chunked_loss(model, inputs)), "bench chunked (no TRL)"
    add_fused_lm_head(getattr(model, "_orig_mod", model))
    return (lambda inputs: model(**inputs, use_cache=False, fused_lm_head=True).loss), "TRL fused head"


def prepare_mode(mode: str, device: str, batch: int, max_length: int, cache: Path, tokenizer, columns) -> dict:
    """What one mode trains with: its seeded batch plan, a fresh model (same seed for every mode), AdamW, its loss."""
    import torch

    from medgpt.training.batching import BatchPlan

    lengths = [len(x) for x in columns["input_ids"]]
    plan = list(BatchPlan(batches_for(mode, lengths, batch, max_length, random.Random(0)), seed=0))  # seeded order
    model = make_model(device, cache, varlen=mode in VARLEN_MODES)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # the Trainer default, adamw_torch_fused
    loss_of, loss_kind = loss_function(mode, model)
    if mode == "j_compiled":  # fixed packed-row shapes: compile once
        loss_of, loss_kind = loss_function(mode, torch.compile(model))
    if mode in CHECKPOINTED_MODES:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return {"mode": mode, "plan": plan, "model": model, "optimizer": optimizer, "loss_of": loss_of,
            "loss": loss_kind, "pad_id": tokenizer.pad_token_id, "device": device}


def train_step(state: dict, columns, batch_indices):
    """One optimizer step of a mode; returns (non-padding tokens, padded tokens, loss)."""
    inputs, real, padded = collate(state["mode"], columns, batch_indices, state["pad_id"], state["device"])
    loss = state["loss_of"](inputs)
    loss.backward()
    state["optimizer"].step()
    state["optimizer"].zero_grad(set_to_none=True)
    return real, padded, loss


def result(state: dict, seconds: float, real: int, padded: int, steps: int, loss, peak_gb) -> dict:
    return {"mode": state["mode"], "oom": False, "tokens_per_s": real / seconds, "padding": 1 - real / padded,
            "peak_memory_gb": peak_gb, "params": sum(p.numel() for p in state["model"].parameters()),
            "final_loss": loss.item(), "steps": steps, "tokens": real, "loss": state["loss"]}


def set_cpu_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # 1 thread, as RECIPES.md's references


def run_mode_gpu(mode: str, steps: int, warmup: int, batch: int, max_length: int, cache: Path, tokenizer,
                 columns) -> dict:
    """One mode on the GPU, alone (its peak memory is then its own)."""
    import torch

    state = prepare_mode(mode, "cuda", batch, max_length, cache, tokenizer, columns)
    plan = state["plan"]
    steps = steps or len(plan)  # 0: one epoch (the warmup steps come from its start and are seen again)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    real_tokens = padded_tokens = 0
    try:
        for step in range(warmup + steps):
            if step == warmup:
                torch.cuda.synchronize()
                started = time.perf_counter()
            real, padded, loss = train_step(state, columns, plan[step % len(plan)])
            if step >= warmup:
                real_tokens += real
                padded_tokens += padded
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return {"mode": mode, "oom": True, "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)}
    return result(state, time.perf_counter() - started, real_tokens, padded_tokens, steps, loss,
                  round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))


def run_interleaved_cpu(modes, steps: int, warmup: int, batch: int, max_length: int, cache: Path, tokenizer,
                        columns) -> list:
    """Every CPU mode in one process, one step at a time in turn, each step timed on its own: a shared machine's
    slow spells (separate runs here drift by +-10%) then fall on every mode alike. With steps=0 (one epoch each)
    the next step goes to the mode furthest behind in its own epoch."""
    set_cpu_threads()
    states = [prepare_mode(mode, "cpu", batch, max_length, cache, tokenizer, columns) for mode in modes]
    for s in states:
        s.update(done=0, total=warmup + (steps or len(s["plan"])), seconds=0.0, real=0, padded=0)
    while True:
        pending = [s for s in states if s["done"] < s["total"]]
        if not pending:
            break
        s = min(pending, key=lambda s: s["done"] / s["total"])
        started = time.perf_counter()
        real, padded, s["last_loss"] = train_step(s, columns, s["plan"][s["done"] % len(s["plan"])])
        if s["done"] >= warmup:
            s["seconds"] += time.perf_counter() - started
            s["real"] += real
            s["padded"] += padded
        s["done"] += 1
        if sum(x["done"] for x in states) % 50 == 0:
            print(" ".join(f"{x['mode']} {x['done']}/{x['total']}" for x in states), file=sys.stderr, flush=True)
    return [result(s, s["seconds"], s["real"], s["padded"], s["total"] - warmup, s["last_loss"],
                   peak_memory_gb(s["mode"], cache)) for s in states]


def train_largest_batches(mode: str, batch: int, max_length: int, cache: Path, count: int = 2) -> float:
    """Train a mode on its `count` largest batches in this (fresh) process; return the peak resident memory, GB."""
    set_cpu_threads()
    tokenizer, columns = build_tokenizer_and_data(max_length, cache)
    state = prepare_mode(mode, "cpu", batch, max_length, cache, tokenizer, columns)
    padded = [collate(mode, columns, b, state["pad_id"], "cpu")[2] for b in state["plan"]]
    for i in sorted(range(len(padded)), key=padded.__getitem__)[-count:]:
        train_step(state, columns, state["plan"][i])
    status = Path("/proc/self/status").read_text()  # VmHWM: unlike ru_maxrss, not inherited over exec from the
    return round(int(status.split("VmHWM:")[1].split()[0]) / 2 ** 20, 2)  # parent, which holds every mode's model


def peak_memory_gb(mode: str, cache: Path) -> float:
    """A mode's peak memory on CPU: its largest batches trained in a fresh process (the interleaved run shares
    one process between modes)."""
    out = subprocess.run([sys.executable, __file__, "--peak-of", mode, "--cache", str(cache)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--epoch", action="store_true",
                        help="each mode trains one epoch of the data (its own number of steps) instead of --steps")
    parser.add_argument("--modes")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/medgpt/bench-tokenizer"))
    args = parser.parse_args()
    gpu = args.device == "cuda"
    batch, max_length = (8, 1024) if gpu else (4, 512)
    steps = 0 if args.epoch else args.steps if args.steps is not None else (30 if gpu else 20)
    warmup = args.warmup or (5 if gpu else 2)
    cache = Path(args.cache)
    if args.peak_of:  # a child process: one mode's peak resident memory
        print(train_largest_batches(args.peak_of, batch, max_length, cache))
        return
    default_modes = "a_medicalgpt,b_group_len,c_default,c_fused,d_packing"
    if gpu:
        default_modes += ",d_varlen,f_big,i_best,h_c_32x1024,g_a_32x1024"
    modes = (args.modes or default_modes).split(",")
    tokenizer, columns = build_tokenizer_and_data(max_length, cache)  # once, shared by every mode
    if not gpu:
        results = run_interleaved_cpu(modes, steps, warmup, batch, max_length, cache, tokenizer, columns)
    else:
        results = []
        for mode in modes:
            try:
                results.append(run_mode_gpu(mode, steps, warmup, batch, max_length, cache, tokenizer, columns))
            except Exception as e:  # one broken option must not hide the others' numbers
                import traceback

                traceback.print_exc()
                results.append({"mode": mode, "oom": True, "peak_memory_gb": f"error: {type(e).__name__}"})
            print(json.dumps(results[-1]), flush=True)
    report(results, gpu, batch, max_length, steps)


def report(results, gpu: bool, batch: int, max_length: int, steps: int):
    import torch

    by_mode = {r["mode"]: r for r in results}
    base_a = by_mode.get("a_medicalgpt", {}).get("tokens_per_s")
    base_b = by_mode.get("b_group_len", {}).get("tokens_per_s")
    peak = None
    if gpu:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
        print(f"device: {name}; MFU = 6 * N * tokens/s / {peak} TFLOP/s (dense bf16 spec), N = all parameters")
    print(f"batch {batch} x max length {max_length}, " +
          ("one epoch per mode" if not steps else f"{steps} timed steps per mode"))
    header = f"{'mode':<14} {'loss':<22} {'steps':>5} {'tok/s':>9} {'vs a':>6} {'vs b':>6} {'padding':>8} {'peak GB':>8}" + (
        f" {'MFU':>6}" if gpu else "")
    print(header)
    print("-" * len(header))
    final = []
    for r in results:
        if r.get("oom"):
            print(f"{r['mode']:<14} {'':<22} {'':>5} {'OOM':>9} {'':>6} {'':>6} {'':>8} {r['peak_memory_gb']:>8}")
            final.append(f"{r['mode']}=OOM")
            continue
        tps = r["tokens_per_s"]
        line = (f"{r['mode']:<14} {r['loss']:<22} {r['steps']:>5} {tps:>9.0f} {tps / base_a if base_a else 0:>6.2f} "
                f"{tps / base_b if base_b else 0:>6.2f} {r['padding']:>8.1%} {r['peak_memory_gb']:>8}")
        if gpu and peak:
            mfu = 6 * r["params"] * tps / (peak * 1e12)
            line += f" {mfu:>6.1%}"
            r["mfu"] = mfu
        print(line)
        final.append(f"{r['mode']}_tok_s={tps:.0f}")
        if base_a:
            final.append(f"{r['mode']}_vs_a={tps / base_a:.2f}")
        if base_b:
            final.append(f"{r['mode']}_vs_b={tps / base_b:.2f}")
        final.append(f"{r['mode']}_padding={r['padding']:.3f}")
    print(" ".join(final))


if __name__ == "__main__":
    main()
