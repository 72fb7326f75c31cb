"""Talk to a trained model: interactive streaming chat, one-shot prompt, or batch over a file.

    medgpt chat outputs/runs/sft-tiny-cpu/<stamp>                      # interactive (/clear, /exit)
    medgpt chat <run> --prompt "头痛怎么办？"                            # one answer, then exit
    medgpt chat <run> --tools tools.json                               # tool calls shown; /tool <result> answers
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
from medgpt.inference.replies import Replier, check_template_kwargs
from medgpt.modeling.generate import DEFAULTS, SETTINGS, complete_batch
from medgpt.modeling.load import LoadPolicy, add_consent_flags, load_for_inference, resolve_path
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
    add_consent_flags(parser)
    parser.add_argument("--system", help="system prompt")
    for name in SETTINGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name == "max_new_tokens" else float,
                            help="default: final/generation_config.json, else medgpt.modeling.generate.DEFAULTS "
                                 "(temperature 0 = greedy)")


def generation_overrides(args) -> dict:
    return {name: getattr(args, name) for name in SETTINGS}


def load(args):

    policy = LoadPolicy.of_args(args)
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


def read_tools(path: Optional[str]) -> Optional[List[dict]]:
    """--tools: a JSON list of OpenAI tool definitions ({"type": "function", "function": {...}}) or of bare
    function schemas ({"name", "description", "parameters"}), or an object with such a "tools" list."""
    if not path:
        return None
    p = Path(path)
    try:
        tools = json.loads(p.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"--tools {path}: no such file") from None
    except ValueError as e:
        raise UserError(f"--tools {path}: invalid JSON ({e}); write a JSON list of tool definitions") from None
    if isinstance(tools, dict) and "tools" in tools:
        tools = tools["tools"]
    if not isinstance(tools, list) or not tools:
        raise UserError(f"--tools {path}: expected a non-empty JSON list of tool definitions")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UserError(f"--tools {path}: tool {i} has no function name; write "
                            f'{{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}')
        out.append({"type": "function", "function": function})
    return out


def template_kwargs_arg(text: Optional[str]) -> dict:
    try:
        return check_template_kwargs(json.loads(text) if text else {})
    except ValueError as e:
        raise UserError(f"--chat-template-kwargs {text}: {e}") from None


def replier(args, model, tokenizer, info) -> Replier:
    info = {**info, "template": args.template or info.get("template")}  # --template decides the tool format
    return Replier(model, tokenizer, info, chat_template_kwargs=template_kwargs_arg(args.chat_template_kwargs))


def speak(args, replier: Replier, messages: List[dict], tools: Optional[List[dict]], *, reasoning_out,
          calls_out) -> dict:
    """Stream one reply: content to stdout as it comes, reasoning as [think] ... [/think] to reasoning_out,
    tool calls (when the model makes them) as 'tool_call> name {arguments}' lines to calls_out. Returns the
    assistant message for the history (with its tool_calls)."""
    import sys

    overrides = generation_overrides(args)
    ids = replier.render(messages, tools)
    generation = replier.generation(ids, max_new_tokens=replier.budget(len(ids), None,
                                                                       overrides.pop("max_new_tokens")),
                                    **overrides)
    splitter = replier.splitter(ids, tools or None)
    state = {"thinking": False, "content": []}

    def show(delta: dict) -> None:
        if "reasoning_content" in delta:
            if not state["thinking"]:
                print("[think] ", end="", file=reasoning_out, flush=True)
                state["thinking"] = True
            print(delta["reasoning_content"], end="", file=reasoning_out, flush=True)
            return
        if state["thinking"]:
            print(" [/think]", end="\n" if reasoning_out is not sys.stdout else " ", file=reasoning_out,
                  flush=True)
            state["thinking"] = False
        state["content"].append(delta["content"])
        print(delta["content"], end="", flush=True)

    for piece in generation:
        for delta in splitter.feed(piece):
            show(delta)
    rest, calls = splitter.finish()
    for delta in rest:
        show(delta)
    if state["thinking"]:
        print(" [/think]", file=reasoning_out, flush=True)
    print(flush=True)
    for call in calls:
        print(f"tool_call> {call['function']['name']} {call['function']['arguments']}", file=calls_out,
              flush=True)
    message = {"role": "assistant", "content": "".join(state["content"]).strip()}
    if calls:
        message["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["function"]["name"],
                                               "arguments": json.loads(c["function"]["arguments"])}}
                                 for c in calls]
    return message


def interactive(args, replier: Replier, tools: Optional[List[dict]] = None) -> None:
    import sys

    print("medgpt chat: type a message; /clear starts over, /exit quits"
          + (", /tool <result> answers the last tool call." if tools else "."), flush=True)
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
        if line.startswith("/tool"):
            pending = [c for c in (history[-1].get("tool_calls", []) if history else [])]
            if not pending:
                print("(no tool call to answer)", flush=True)
                continue
            history.append({"role": "tool", "content": line[len("/tool"):].strip(), "tool_call_id": pending[0]["id"]})
        else:
            history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        history.append(speak(args, replier, with_system(args.system, history), tools, reasoning_out=sys.stdout,
                             calls_out=sys.stdout))


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
    parser.add_argument("--tools", help="a JSON file of tool definitions (OpenAI format) offered to the model; "
                                        "its tool calls are shown as 'tool_call> name {arguments}'")
    parser.add_argument("--chat-template-kwargs", help='template variables over the run\'s own (RUN_INFO), '
                                                       'e.g. \'{"enable_thinking": false}\'')
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
        if args.tools:
            raise UserError("--tools is for interactive and --prompt chats, not batch --input")
        run_batch(args)
        return 0
    import sys

    tools = read_tools(args.tools)
    template_kwargs_arg(args.chat_template_kwargs)  # a bad value fails before the model loads
    model, tokenizer, info = load(args)
    talk = replier(args, model, tokenizer, info)
    if args.prompt:
        messages = with_system(args.system, [{"role": "user", "content": args.prompt}])
        speak(args, talk, messages, tools, reasoning_out=sys.stderr, calls_out=sys.stdout)
    else:
        interactive(args, talk, tools)
    return 0
