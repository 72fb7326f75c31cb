"""Look at the data before training on it: record counts (and what reading trimmed, dropped or skipped), token-length
percentiles, samples over the max length, the share of tokens that carry loss, the tool definitions the records
give the model, and two examples rendered (with their tools) with their loss-bearing spans marked «like this».

    medgpt data inspect data=medical_sft model=tiny
    medgpt data inspect data=shibing624_medical_finetune model=qwen2.5-7b data.max_samples=2000
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional, Tuple

from medgpt.config import GPU_DEVICE, compose as compose_run, resolve
from medgpt.data import load_data
from medgpt.data.tokenize import IGNORE, chat_labels, template_kwargs
from medgpt.errors import UserError
from medgpt.modeling.estimate import plan as plan_hardware
from medgpt.modeling.hardware import device_info
from medgpt.modeling.load import load_tokenizer

PERCENTILES = (50, 90, 95, 99)
LOSS_OPEN, LOSS_CLOSE = "«", "»"


def compose(overrides: List[str]):
    """The run config `python train.py <overrides>` would build; without stage=, the data's first declared stage."""

    cfg = compose_run(overrides)
    stage_given = any(o.split("=", 1)[0].lstrip("+~") == "stage" for o in overrides)
    if not stage_given and cfg.data.stages and cfg.stage.name not in cfg.data.stages:
        cfg = compose_run([f"stage={cfg.data.stages[0]}", *overrides])
    return cfg


def as_chat(row: dict) -> Optional[List[dict]]:
    """The conversation a record trains on (preference: prompt + chosen), or None for plain text."""
    if "messages" in row:
        return row["messages"]
    if "chosen" in row:
        return row["prompt"] + row["chosen"]
    if "completion" in row:
        return row["prompt"] + row["completion"]
    if "prompt" in row:
        answer = row.get("answer")
        return row["prompt"] + ([{"role": "assistant", "content": answer}] if answer else [])
    return None


def tokenize_row(row: dict, tokenizer, **kwargs) -> Tuple[List[int], List[int]]:
    """(ids, labels) as the stage trains the record; the record's tools and the run's chat_template_kwargs (kwargs)
    reach the template."""
    messages, tools = as_chat(row), row.get("tools") or None
    if messages is None:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        return ids, list(ids)
    if messages[-1]["role"] != "assistant":  # prompt-only data: nothing carries loss
        ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                            **kwargs)["input_ids"]
        return list(ids), [IGNORE] * len(ids)
    ids, labels = chat_labels(tokenizer, messages, tools, **kwargs)
    if "chosen" in row or "completion" in row:  # preference / unpaired: the completion alone is trained, not the
        prompt = tokenizer.apply_chat_template(row["prompt"], tools=tools, tokenize=True, return_dict=True,
                                               add_generation_prompt=True, **kwargs)["input_ids"]
        labels = [IGNORE] * len(prompt) + labels[len(prompt):]  # assistant turns of the prompt
    return ids, labels


def tool_summary(rows: List[dict]) -> Dict:
    """How many records give the model tools, and the tool names (sorted)."""
    names = {t["function"]["name"] for r in rows for t in r.get("tools") or []}
    return {"records_with_tools": sum(bool(r.get("tools")) for r in rows), "names": sorted(names)}


def percentile(sorted_values: List[int], p: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def render(ids: List[int], labels: List[int], tokenizer) -> str:
    """The decoded sample with every run of loss-bearing tokens wrapped in «…»."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == IGNORE) != (labels[start] == IGNORE):
            text = tokenizer.decode(ids[start:i])
            out.append(text if labels[start] == IGNORE else f"{LOSS_OPEN}{text}{LOSS_CLOSE}")
            start = i
    return "".join(out)


def inspect_data(cfg) -> Dict:
    """The data as the run would see it: its settings (resolved as on a GPU) give the max length and the split seed."""
    auto = cfg.hardware.get("auto") is not None  # hardware=auto: planned for this machine, as the run would
    settings = resolve(cfg, device_info() if auto else GPU_DEVICE, planner=plan_hardware)
    tokenizer = load_tokenizer(cfg.model)
    train, evaluation = load_data(cfg.data, cfg.stage, seed=settings.data_seed)
    max_length = settings.max_length
    kwargs = template_kwargs(settings)
    lengths, loss_tokens, examples = [], 0, []
    for row in train.rows:
        ids, labels = tokenize_row(row, tokenizer, **kwargs)
        lengths.append(len(ids))
        loss_tokens += sum(label != IGNORE for label in labels)
        if len(examples) < 2:
            examples.append(render(ids, labels, tokenizer))
    ordered = sorted(lengths)
    return {
        "data": cfg.data.name, "stage": cfg.stage.name, "model": cfg.model.name,
        "train_records": len(train.rows), "eval_records": len(evaluation.rows) if evaluation else 0,
        "formats": dict(train.formats), "skipped": dict(train.skipped), "mix": dict(train.sources),
        "cleaned": dict(train.cleaned), "tools": tool_summary(train.rows),
        "tool_definitions": next((r["tools"] for r in train.rows if r.get("tools")), None),
        "tokens": sum(lengths), "max_length": max_length, "max_length_from": settings.source("max_length"),
        "length_percentiles": {f"p{p}": percentile(ordered, p) for p in PERCENTILES} | {"max": ordered[-1]},
        "over_max_length": sum(n > max_length for n in lengths),
        "loss_token_share": round(loss_tokens / max(1, sum(lengths)), 4),
        "pt_blocks": sum(lengths) // cfg.data.block_size if cfg.stage.name == "pt" else None,
        "examples": examples,
    }


def report(stats: Dict) -> str:
    lines = [f"data={stats['data']}  stage={stats['stage']}  model={stats['model']}",
             f"records        train {stats['train_records']}, eval {stats['eval_records']}; formats {stats['formats']}"]
    if stats["skipped"]:
        lines.append(f"skipped        {stats['skipped']}")
    if stats.get("cleaned"):
        lines.append(f"cleaned        {stats['cleaned']} (unanswered last turns cut, records without an answer "
                     f"dropped)")
    if stats.get("tools", {}).get("records_with_tools"):
        lines.append(f"tools          {stats['tools']['records_with_tools']} record(s) give tools: "
                     f"{', '.join(stats['tools']['names'])}")
    if stats["mix"]:
        lines.append(f"mix            {stats['mix']}")
    pcts = "  ".join(f"{k} {v}" for k, v in stats["length_percentiles"].items())
    lines += [f"tokens         {stats['tokens']} in train records",
              f"length         {pcts}",
              f"over max       {stats['over_max_length']} record(s) longer than max_length={stats['max_length']} "
              f"({stats['max_length_from']})",
              f"loss share     {stats['loss_token_share']:.1%} of tokens carry loss"]
    if stats["pt_blocks"] is not None:
        lines.append(f"pt blocks      {stats['pt_blocks']} full blocks of data.block_size")
    if stats.get("tool_definitions"):
        lines += ["", "--- tool definitions of the first record with tools ---",
                  json.dumps(stats["tool_definitions"], ensure_ascii=False, indent=1)]
    for i, example in enumerate(stats["examples"], 1):
        lines += ["", f"--- example {i} (loss on the text inside {LOSS_OPEN}…{LOSS_CLOSE}) ---", example]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "inspect":
        raise SystemExit("usage: medgpt data inspect data=<name> model=<name> [stage=<name>] [data.x=...]")
    try:
        stats = inspect_data(compose(argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(report(stats))
    return stats
