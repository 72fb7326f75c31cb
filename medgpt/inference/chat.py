"""Talk to a trained model: interactive streaming chat, one-shot prompt, or batch over a file.

    medgpt chat outputs/runs/sft-tiny-cpu/<stamp>                      # interactive (/clear, /exit)
    medgpt chat <run> --prompt "头痛怎么办？"                            # one answer, then exit
    medgpt chat <run> --input questions.jsonl --output answers.jsonl     # batch (txt: one a line)
    torchrun --nproc_per_node 2 -m medgpt chat <run> --input q.jsonl --output a.jsonl   # split across ranks
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import List, Optional

from medgpt.data import formats
from medgpt.data.formats import RecordError
from medgpt.errors import DataError, UserError, command
from medgpt.modeling.generate import DEFAULTS, SETTINGS, complete_batch, stream
from medgpt.modeling.load import LoadPolicy, load_for_inference, resolve_path
from medgpt.runs import adapter_base, world_size

QUESTION_KEYS = ("prompt", "question", "instruction", "messages", "conversations")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model and generation options shared by chat, serve, demo and rag."""
    parser.add_argument("model", help="run folder, its final/ folder, a model folder or a hub id ('tiny' works)")
    parser.add_argument("--base", help="base model for a LoRA adapter (default: the base it was trained on)")
    parser.add_argument("--template", help="chat template when the model has none saved (qwen, llama3, chatml)")
    parser.add_argument("--device-map", help="'auto' spreads layers over all GPUs (default: CPU, or this rank's "
                                             "GPU)")
    parser.add_argument("--load-in", choices=["4bit", "8bit"], help="quantize the weights with bitsandbytes")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model's own code (auto_map) if it needs it; only for sources you trust")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle (.bin) weights; unpickling can run code: only for sources you trust")
    parser.add_argument("--system", help="system prompt")
    for name in SETTINGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name == "max_new_tokens" else float,
                            help="default: final/generation_config.json, else medgpt.modeling.generate.DEFAULTS "
                                 "(temperature 0 = greedy)")


def generation_overrides(args) -> dict:
    return {name: getattr(args, name) for name in SETTINGS}


def load(args):

    policy = LoadPolicy(trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    return load_for_inference(args.model, device_map=args.device_map, quantization=args.load_in, base=args.base,
                              template=args.template, policy=policy)


def with_system(system: Optional[str], messages: List[dict]) -> List[dict]:
    if not system or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages


def record_prompt(record: dict, field: Optional[str] = None) -> List[dict]:
    """The conversation to answer for one input record (a trailing assistant turn is the reference: dropped)."""

    if field:
        if field not in record:
            raise formats.RecordError(f"no '{field}' key", f"give every record a '{field}' or change --field")
        return formats.prompt_only({**record, "prompt": record[field]})["prompt"]
    if "instruction" in record and not ({"prompt", "question"} & record.keys()):
        question = record["instruction"] + (f"\n{record['input']}" if record.get("input") else "")
        return formats.prompt_only({**record, "prompt": question})["prompt"]
    if "messages" in record or "conversations" in record:
        turns = record.get("messages", record.get("conversations"))
        if isinstance(turns, list):  # sharegpt's from/value read as role/content; a final answer is dropped
            turns = [{"role": t.get("role", t.get("from")), "content": t.get("content", t.get("value"))}
                     if isinstance(t, dict) else t for t in turns]
            while turns and isinstance(turns[-1], dict) and \
                    formats.ROLE_SYNONYMS.get(str(turns[-1]["role"]).lower()) in formats.ASSISTANT_SIDE:
                turns = turns[:-1]
        return formats.prompt_only({"system": record.get("system"), "prompt": turns})["prompt"]
    if "prompt" in record or "question" in record:
        return formats.prompt_only(record)["prompt"]
    raise formats.RecordError(f"no question key in {sorted(record)}",
                              f"give each record one of {', '.join(QUESTION_KEYS)} (or name it with --field)")


def read_questions(path: str, field: Optional[str] = None, system: Optional[str] = None):
    """(records, conversations) from a .txt (one question a line) or .jsonl file; bad lines name file:line."""

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--input {path}: no such file")
    records, conversations = [], []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise RecordError("the line is not a JSON object", "write one JSON object a line")
                messages = record_prompt(record, field)
            except json.JSONDecodeError as e:
                raise DataError(p, n, f"invalid JSON ({e.msg})", "write one JSON object a line") from None
            except RecordError as e:
                raise DataError(p, n, e.problem, e.fix) from None
        elif p.suffix == ".txt":
            record, messages = {"question": line.strip()}, [{"role": "user", "content": line.strip()}]
        else:
            raise UserError(f"--input {path}: use a .jsonl or .txt file")
        records.append(record)
        conversations.append(with_system(system, messages))
    if not records:
        raise DataError(p, None, "the file holds no question", "write one question a line")
    return records, conversations


def write_jsonl(path: str, records: List[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _distributed():
    """(rank, world) under torchrun, with a gloo group for exchanging answers (works on CPUs and GPUs)."""
    world = world_size()
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def run_batch(args) -> None:
    records, conversations = read_questions(args.input, args.field, args.system)
    if args.backend == "vllm":
        answers = _vllm_answers(args, conversations)
        for record, answer in zip(records, answers):
            record[args.answer_field] = answer
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} answers to {args.output}")
        return
    rank, world = _distributed()
    mine = list(range(rank, len(records), world))  # round-robin: every rank gets a similar mix of lengths
    model, tokenizer, _ = load(args)

    done = complete_batch(model, tokenizer, [conversations[i] for i in mine], batch_size=args.batch_size,
                          progress=rank == 0, **generation_overrides(args))
    answers = dict(zip(mine, (c.text for c in done)))
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world if rank == 0 else None
        dist.gather_object(answers, parts, dst=0)
        if rank == 0:
            answers = {i: a for part in parts for i, a in part.items()}
    if rank == 0:
        for i, record in enumerate(records):
            record[args.answer_field] = answers[i]
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} answers to {args.output}" + (f" ({world} processes)" if world > 1 else ""))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _vllm_answers(args, conversations) -> List[str]:
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--backend vllm needs vLLM (a CUDA GPU and `pip install vllm`); it is not installed. "
                        "Drop --backend vllm to use the transformers backend (torchrun splits the work)")
    from vllm import LLM, SamplingParams

    path = resolve_path(args.model)
    base = args.base or adapter_base(path)
    values = {k: v for k, v in generation_overrides(args).items() if v is not None}
    values = {**DEFAULTS, **values}
    llm = LLM(model=base or path, tokenizer=path, enable_lora=bool(base))
    params = SamplingParams(max_tokens=values["max_new_tokens"], temperature=values["temperature"],
                            top_p=values["top_p"], repetition_penalty=values["repetition_penalty"])
    lora = None
    if base:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, path)
    outputs = llm.chat(conversations, params, lora_request=lora)
    return [o.outputs[0].text.strip() for o in outputs]


def interactive(args, model, tokenizer) -> None:

    print("medgpt chat: type a message; /clear starts over, /exit quits.", flush=True)
    history: List[dict] = []
    while True:
        try:
            line = input("\nuser> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/clear":
            history = []
            print("(history cleared)", flush=True)
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        pieces = []
        for piece in stream(model, tokenizer, with_system(args.system, history), **generation_overrides(args)):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces).strip()})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="medgpt chat", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--prompt", help="answer this one question and exit")
    parser.add_argument("--input", help="batch: questions as .jsonl (prompt/question/instruction/messages) or .txt")
    parser.add_argument("--output", help="batch: answers as .jsonl (input fields + the answer)")
    parser.add_argument("--field", help="batch: the key holding the question in each .jsonl record")
    parser.add_argument("--answer-field", default="answer", help="batch: key for the answer (default: answer)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    args = parser.parse_args(argv)
    if bool(args.input) != bool(args.output):
        parser.error("--input and --output go together")
    if args.prompt and args.input:
        parser.error("use either --prompt or --input")
    if world_size() > 1 and not args.input:
        parser.error("under torchrun, give --input and --output (interactive chat runs in one process)")
    if args.backend == "vllm" and not args.input:
        parser.error("--backend vllm is for batch inference: give --input and --output")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.input:
        run_batch(args)
        return 0
    model, tokenizer, _ = load(args)
    if args.prompt:
        messages = with_system(args.system, [{"role": "user", "content": args.prompt}])
        for piece in stream(model, tokenizer, messages, **generation_overrides(args)):
            print(piece, end="", flush=True)
        print()
    else:
        interactive(args, model, tokenizer)
    return 0
