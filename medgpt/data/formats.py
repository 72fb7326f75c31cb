"""Pure converters: one source record (a dict) -> one normalised record, or a RecordError saying why not.

Normalised kinds (what stages consume):
    chat        {"messages": [{"role", "content"}, ...], "tools"?: [...]}   sft, eval
    text        {"text": str}                                               pt
    preference  {"prompt": [msgs], "chosen": [msg], "rejected": [msg], "tools"?}   rm, dpo, orpo, simpo, kto
    unpaired    {"prompt": [msgs], "completion": [msg], "label": bool, "tools"?}   kto

Messages are HF chat messages: {"role": system|user|assistant|tool, "content": str, "reasoning_content"?: str,
"tool_calls"?: [{"type": "function", "function": {"name": str, "arguments": dict}}]}; "tools" is a list of
{"type": "function", "function": <JSON schema>}, rendered by apply_chat_template(messages, tools=tools).
    prompt      {"prompt": [msgs], "answer": str | None}                    grpo, ppo, eval (QA)
    mcq         {"question": str, "options": {"A": str, ...}, "answer": "C"}  eval

    python -c "from medgpt.data.formats import convert; print(convert('alpaca', {'instruction': 'hi', 'output': 'yo'}))"
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional


class RecordError(ValueError):
    """What is wrong with one record, and how to fix it (file and line are added by the reader)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


ROLE_SYNONYMS = {
    "system": "system",
    "human": "user", "user": "user", "question": "user", "instruction": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "model": "assistant", "response": "assistant",
    "function_call": "function_call", "observation": "observation", "tool": "observation", "function": "observation",
}
# Source roles that answer / ask: a tool call (MedicalGPT's function_call turn) is the assistant's, a tool result
# (observation) the user side's. In normalised messages they become HF's assistant `tool_calls` and role "tool".
ASSISTANT_SIDE = {"assistant", "function_call"}
USER_SIDE = {"user", "observation"}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # a turn's reasoning, under any of these names
TOOL_CALL_EXAMPLE = '{"name": "<function>", "arguments": {"<parameter>": "<value>"}}'
TOOLS_EXAMPLE = '[{"name": "<function>", "description": "...", "parameters": {"type": "object", "properties": {}}}]'


class Unanswered(RecordError):
    """A conversation with no assistant answer at all: dropped and counted (never fatal)."""


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}",
                          f"write {what} as a JSON string")
    return value


def _json(value, what: str, example: str):
    """A JSON string (or an already parsed value) -> the value; invalid JSON is a RecordError naming `what`."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RecordError(f"{what} is not valid JSON ({e.msg} at column {e.colno})",
                          f"write {what} as JSON, e.g. {example}") from None


def parse_tools(value) -> Optional[List[dict]]:
    """A record's `tools` (a JSON string or a list; MedicalGPT/LLaMA-Factory bare functions or OpenAI
    {"type": "function", "function": {...}} entries) -> HF's list of {"type": "function", "function": schema}."""
    if value is None or value == "" or value == []:
        return None
    tools = _json(value, "'tools'", TOOLS_EXAMPLE)
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RecordError(f"'tools' must be a list of function schemas, got {type(tools).__name__}",
                          f"write 'tools' as {TOOLS_EXAMPLE}")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(f"tool {i + 1} of 'tools' has no function name",
                              f"write 'tools' as {TOOLS_EXAMPLE}")
        out.append({"type": "function", "function": function})
    return out or None


def parse_tool_calls(value, what: str) -> List[dict]:
    """A tool call (MedicalGPT's function_call value: {"name", "arguments"}, a JSON string of it, a list of them, or
    OpenAI's {"type": "function", "function": {"name", "arguments": "<JSON>"}}) -> HF tool_calls, arguments a dict."""
    calls = _json(value, what, TOOL_CALL_EXAMPLE)
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise RecordError(f"{what} must be a JSON object, got {type(call).__name__}",
                              f"write it as {TOOL_CALL_EXAMPLE}")
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise RecordError(f"{what} has no function name", f"write it as {TOOL_CALL_EXAMPLE}")
        arguments = function.get("arguments", function.get("parameters", {}))
        arguments = _json(arguments, f"the arguments of {what}", TOOL_CALL_EXAMPLE)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RecordError(f"the arguments of {what} must be a JSON object, got {type(arguments).__name__}",
                              f"write it as {TOOL_CALL_EXAMPLE}")
        entry = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    if not out:
        raise RecordError(f"{what} holds no call", f"write it as {TOOL_CALL_EXAMPLE}")
    return out


def _reasoning(turn: dict, what: str) -> Optional[str]:
    for key in REASONING_KEYS:
        if turn.get(key) is not None:
            value = _text(turn[key], f"{what} '{key}'")
            return value if value.strip() else None
    return None


def _content(value, what: str) -> str:
    """A turn's text: a string, or OpenAI's list of content parts ({"type": "text", "text": ...}) joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return _text(value, what)


def check_turns(messages: List[dict], need_assistant_last: bool = False, prompt: bool = False) -> List[dict]:
    """Turn order: an optional leading system turn, then user first; a user turn is answered by the assistant; a tool
    result follows an assistant turn with tool calls (or another tool result) and is followed by the assistant.
    An empty assistant turn before a real answer is malformed; one at the end counts as no answer (see `answered`).
    After the last answer (cut by `answered`), user turns may follow each other, except in a prompt (prompt=True).
    need_assistant_last: also require the conversation to end with an answer (raises Unanswered).
    prompt: a prompt (preference, GRPO, KTO): every assistant turn in it must have text."""
    if not messages:
        raise RecordError("the conversation is empty", "add at least one user and one assistant turn")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise RecordError("a system turn appears after the first turn", "put the system prompt first, once")
    last_answer = max((i for i, m in enumerate(body) if _is_answer(m)), default=-1)
    previous = None
    for i, m in enumerate(body):
        role = m["role"]
        if previous is None or previous["role"] == "user":
            allowed = ("user",) if previous is None else ("assistant",)
        elif previous["role"] == "assistant":
            allowed = ("user", "tool") if previous.get("tool_calls") else ("user",)
        else:  # after a tool result: more results, or the assistant
            allowed = ("tool", "assistant")
        if i > last_answer and not prompt and previous is not None and previous["role"] == "user":
            allowed = ("assistant", "user")  # "...?" then "继续" after the last answer: cut by `answered`
        if role not in allowed:
            want = " or ".join(allowed)
            raise RecordError(f"turn {i + 1} is '{role}' but {'an' if want[0] == 'a' else 'a'} {want} turn was "
                              f"expected (turns out of order)",
                              "alternate user and assistant turns, starting with the user; tool results follow "
                              "the assistant's tool call")
        if role == "assistant" and not _is_answer(m) and (i < last_answer or prompt):
            raise RecordError(f"turn {i + 1} is an empty assistant turn", "give every assistant turn some text")
        previous = m
    if need_assistant_last:
        answered(messages)
    return messages


def _is_answer(message: dict) -> bool:
    return message["role"] == "assistant" and bool(message.get("tool_calls") or message["content"].strip())


def answered(messages: List[dict]) -> tuple:
    """(messages without trailing unanswered turns, how many turns were trimmed). A conversation that has no answer
    at all raises Unanswered: such records are dropped and counted, as the seed and LLaMA-Factory train on such data."""
    end = len(messages)
    while end and not _is_answer(messages[end - 1]):
        end -= 1
    if end == 0:
        raise Unanswered("the conversation has no assistant answer", "add the assistant's answer")
    return messages[:end], len(messages) - end


def _turns(items, role_key: str, content_key: str, what: str) -> List[dict]:
    """Source turns -> HF messages: {"role", "content", "reasoning_content"?, "tool_calls"?}; a function_call turn
    becomes an assistant turn with tool_calls, an observation/tool turn role "tool"."""
    if not isinstance(items, list):
        raise RecordError(f"'{what}' must be a list of turns", f"write '{what}' as a JSON list")
    out = []
    for i, turn in enumerate(items):
        calls = turn.get("tool_calls") if isinstance(turn, dict) else None
        if not calls and isinstance(turn, dict) and isinstance(turn.get("function_call"), dict):
            calls = [turn["function_call"]]  # OpenAI's older single `function_call` field
        if not isinstance(turn, dict) or role_key not in turn or (content_key not in turn and not calls):
            raise RecordError(f"turn {i + 1} of '{what}' needs keys '{role_key}' and '{content_key}'",
                              f"write each turn as {{\"{role_key}\": ..., \"{content_key}\": ...}}")
        role = ROLE_SYNONYMS.get(str(turn[role_key]).strip().lower())
        if role is None:
            raise RecordError(f"turn {i + 1} has unknown role '{turn[role_key]}'",
                              f"use one of: {', '.join(sorted(ROLE_SYNONYMS))}")
        where = f"turn {i + 1} '{content_key}'"
        content = turn.get(content_key)
        if role == "function_call":
            message = {"role": "assistant", "content": "",
                       "tool_calls": parse_tool_calls(content, f"the function_call of turn {i + 1}")}
        else:
            content = "" if content is None and calls and role == "assistant" else _content(content, where)
            message = {"role": "tool" if role == "observation" else role, "content": content}
            if calls:
                if role != "assistant":
                    raise RecordError(f"turn {i + 1} is '{turn[role_key]}' but has tool_calls",
                                      "only assistant turns call tools")
                message["tool_calls"] = parse_tool_calls(calls, f"the tool_calls of turn {i + 1}")
            for key in ("tool_call_id", "name"):
                if message["role"] == "tool" and isinstance(turn.get(key), str):
                    message[key] = turn[key]
        reasoning = _reasoning(turn, f"turn {i + 1}") if message["role"] == "assistant" else None
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        out.append(message)
    return out


def _with_tools(row: dict, r: dict) -> dict:
    """Adds the record's tool definitions (`tools`) to a normalised row, when it has some."""
    tools = parse_tools(r.get("tools"))
    if tools:
        row["tools"] = tools
    return row


def sharegpt(r: dict) -> dict:
    """ShareGPT turns (MedicalGPT's SFT format), with MedicalGPT v2.6's function_call / observation turns and the
    record's `tools` (a JSON string or list of function schemas)."""
    messages = check_turns(_system(r) + _turns(r["conversations"], "from", "value", "conversations"))
    return _with_tools({"messages": messages}, r)


def openai_messages(r: dict) -> dict:
    """OpenAI / HF messages: assistant `tool_calls`, `role: "tool"` results, `reasoning_content`, and `tools`."""
    messages = check_turns(_system(r) + _turns(r["messages"], "role", "content", "messages"))
    return _with_tools({"messages": messages}, r)


def _system(r: dict) -> List[dict]:
    system = r.get("system")
    return [{"role": "system", "content": _text(system, "system")}] if system else []


def _history(r: dict) -> List[dict]:
    turns = []
    for i, pair in enumerate(r.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError(f"history item {i + 1} is not a [question, answer] pair",
                              "write history as [[question, answer], ...]")
        turns += [{"role": "user", "content": _text(pair[0], "history question")},
                  {"role": "assistant", "content": _text(pair[1], "history answer")}]
    return turns


def alpaca(r: dict) -> dict:
    question = _text(r["instruction"], "instruction")
    if r.get("input"):
        question = f"{question}\n{_text(r['input'], 'input')}"
    answer = {"role": "assistant", "content": _text(r["output"], "output")}
    reasoning = _reasoning(r, "the record")
    if reasoning is not None:
        answer["reasoning_content"] = reasoning
    messages = _system(r) + _history(r) + [{"role": "user", "content": question}, answer]
    return _with_tools({"messages": check_turns(messages)}, r)


def _dialogue(text: str, speaker: re.Pattern, roles: Dict[str, str], what: str, fix: str) -> List[dict]:
    """Plain-text dialogue -> turns: `speaker` splits it at each speaker mark (its one group names the speaker)."""
    pieces = speaker.split(text)  # [before, speaker, said, speaker, said, ...]
    if pieces[0].strip():
        raise RecordError(f"{what} starts with '{pieces[0].strip()[:40]}' before any speaker mark ({' '.join(roles)})",
                          fix)
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(pieces[1::2], pieces[2::2])]


MOSS_SPEAKER = re.compile(r"(\[(?:Human|MOSS)\]:)")
MOSS_ROLES = {"[Human]:": "user", "[MOSS]:": "assistant"}
MOSS_END_OF_TURN = re.compile(r"\s*(<eoh>|<eoa>)\s*$")


def moss(r: dict) -> dict:
    """MOSS-002 plain-text dialogues: "[Human]: q<eoh> [MOSS]: a<eoa> [Human]: ..." (fnlp/moss-002-sft-data)."""
    turns = _dialogue(_text(r["plain_text"], "plain_text"), MOSS_SPEAKER, MOSS_ROLES, "plain_text",
                      "start the dialogue with '[Human]: '")
    messages = [dict(t, content=MOSS_END_OF_TURN.sub("", t["content"])) for t in turns]
    return {"messages": check_turns(_system(r) + messages)}


# "Human: ... Assistant: ..." transcripts, one speaker mark at the start of a line: Anthropic HH (Dahoas/*,
# yitingxie/*: "\n\nHuman: ...\n\nAssistant:"), Belle multi-turn ("Human:...\nAssistant:..."), and OpenAssistant's
# "prompter: ...\nassistant: ..." (tasksource/oasst1_pairwise_rlhf_reward).
TRANSCRIPT_SPEAKER = re.compile(r"(?:^|\n)[ \t]*((?:Human|Assistant|prompter|assistant):)")
TRANSCRIPT_ROLES = {"Human:": "user", "prompter:": "user", "Assistant:": "assistant", "assistant:": "assistant"}
ANSWER_CUE = re.compile(r"^\s*(Assistant|assistant):")


def _transcript(value, what: str, plain: str) -> List[dict]:
    """The turns of a transcript that ends with the user's question (a last, empty 'Assistant:' cue is dropped).
    `plain`: the format to name for text without speaker marks."""
    turns = _dialogue(_text(value, what), TRANSCRIPT_SPEAKER, TRANSCRIPT_ROLES, what,
                      f"start '{what}' with 'Human: ' (text without speaker marks is data.format={plain})")
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns = turns[:-1]  # the open "Assistant:" the answer follows
    if not turns:
        raise RecordError(f"'{what}' has no 'Human:' turn", f"write '{what}' as 'Human: question\\nAssistant:'")
    if turns[-1]["role"] != "user":
        raise RecordError(f"'{what}' ends with an assistant turn, not the question being answered",
                          f"end '{what}' with the last 'Human:' question (and an empty 'Assistant:')")
    return turns


def _transcript_answer(value, what: str) -> str:
    """One assistant answer: a leading 'Assistant:' mark and surrounding whitespace removed."""
    answer = ANSWER_CUE.sub("", _text(value, what), count=1).strip()
    more = TRANSCRIPT_SPEAKER.search(answer)
    if more:
        raise RecordError(f"'{what}' holds another turn ('{more.group(1)}' inside it)",
                          f"give '{what}' only the final assistant answer; earlier turns belong in the prompt")
    return answer


def belle_multiturn(r: dict) -> dict:
    """Belle multi-turn chats (BelleGroup/multiturn_chat_0.8M): the earlier turns are inline in 'instruction',
    "Human:q1\nAssistant:a1\nHuman:q2\nAssistant:", and 'output' answers the last question."""
    turns = _transcript(r["instruction"], "instruction", plain="alpaca")
    if r.get("input"):
        turns[-1]["content"] += "\n" + _text(r["input"], "input")
    answer = {"role": "assistant", "content": _text(r["output"], "output")}
    return {"messages": check_turns(_system(r) + turns + [answer])}


def text(r: dict) -> dict:
    value = _text(r["text"], "text")
    if not value.strip():
        raise RecordError("the text is empty", "remove the record or give it text")
    return {"text": value}


def _answer(value, what: str) -> List[dict]:
    """One assistant answer: a string, TRL's conversational [{"role": "assistant", "content": ...}], or one ShareGPT
    turn {"from": "gpt" | "function_call", "value": ...} (a tool call as the answer); reasoning_content kept."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        keys = ("from", "value") if value and isinstance(value[0], dict) and "from" in value[0] else ("role", "content")
        msgs = _turns(value, *keys, what)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise RecordError(f"'{what}' must be one assistant turn", f"write '{what}' as a string")
        message = msgs[0]
    else:
        message = {"role": "assistant", "content": _text(value, what)}
    if not _is_answer(message):
        raise RecordError(f"'{what}' is empty", f"give '{what}' text")
    return [message]


def _pair(prompt: List[dict], chosen, rejected) -> dict:
    check_turns(prompt, prompt=True)
    if prompt[-1]["role"] not in ("user", "tool"):
        raise RecordError("the prompt must end with a user turn", "end the prompt with the question")
    chosen, rejected = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if _same(chosen[0], rejected[0]):
        raise RecordError("chosen and rejected are identical", "remove the pair: it teaches nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _same(a: dict, b: dict) -> bool:
    return (a["content"].strip(), a.get("tool_calls")) == (b["content"].strip(), b.get("tool_calls"))


def _prompt(value, what: str = "prompt") -> List[dict]:
    if isinstance(value, list):
        return _turns(value, "role", "content", what)
    if not _text(value, what).strip():
        raise RecordError(f"'{what}' is empty", f"give '{what}' text")
    return [{"role": "user", "content": value}]


def sharegpt_preference(r: dict) -> dict:
    prompt = _system(r) + _turns(r["conversations"], "from", "value", "conversations")
    return _with_tools(_pair(prompt, r["chosen"], r["rejected"]), r)


def trl_preference(r: dict) -> dict:
    return _with_tools(_pair(_system(r) + _prompt(r["prompt"]), r["chosen"], r["rejected"]), r)


def hh_preference(r: dict) -> dict:
    """Anthropic HH-style pairs: prompt "\\n\\nHuman: q1\\n\\nAssistant: a1\\n\\nHuman: q2\\n\\nAssistant:"
    (or OpenAssistant "prompter: q1\\nassistant: a1\\nprompter: q2"); chosen/rejected answer q2, with or
    without a leading "Assistant:"."""
    prompt = _system(r) + _transcript(r["prompt"], "prompt", plain="trl_preference")
    return _pair(prompt, _transcript_answer(r["chosen"], "chosen"), _transcript_answer(r["rejected"], "rejected"))


def qa_preference(r: dict) -> dict:
    prompt = _system(r) + _history(r) + _prompt(r["question"], "question")
    return _pair(prompt, r["response_chosen"], r["response_rejected"])


def unpaired(r: dict) -> dict:
    label = r["label"]
    if not isinstance(label, bool):
        raise RecordError(f"'label' must be true or false, got {label!r}", "write label as a JSON boolean")
    prompt = _system(r) + _prompt(r["prompt"])
    check_turns(prompt, prompt=True)
    return _with_tools({"prompt": prompt, "completion": _answer(r["completion"], "completion"), "label": label}, r)


def prompt_only(r: dict) -> dict:
    question = r["prompt"] if "prompt" in r else r["question"]
    prompt = _system(r) + _prompt(question, "prompt" if "prompt" in r else "question")
    answer = r.get("answer")
    return {"prompt": check_turns(prompt, prompt=True),
            "answer": None if answer is None else str(answer)}


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _options(value) -> Dict[str, str]:
    """{"A": "..."} | ["...", "..."] | "A. ...\nB. ..." (CMExam) -> {"A": "...", "B": "..."}."""
    if isinstance(value, list):
        value = dict(zip(LETTERS, value))
    elif isinstance(value, str):
        value = dict(_option_line(line) for line in value.splitlines() if line.strip())
    if not isinstance(value, dict):
        raise RecordError(f"'options' must be an object, a list or lines, got {type(value).__name__}",
                          'write options as {"A": "...", "B": "..."}')
    options = {str(k).strip().upper(): _text(v, f"option {k}").strip() for k, v in value.items()}
    if len(options) < 2 or any(k not in LETTERS for k in options) or not all(options.values()):
        raise RecordError(f"options need two or more non-empty choices keyed by letters, got {sorted(options)}",
                          'write options as {"A": "...", "B": "..."}')
    return options


def _option_line(line: str):
    letter, rest = line.strip()[:1].upper(), line.strip()[1:].lstrip(" .:：、)）\t")
    if letter not in LETTERS or not rest:
        raise RecordError(f"option line '{line.strip()}' does not start with a letter", "write 'A. text' lines")
    return letter, rest


def _choice(value, options: Dict[str, str]) -> str:
    """The gold letter: a letter key, or the text of one option (MedQA keeps both; answer_idx is the letter)."""
    answer = _text(value, "answer").strip()
    if answer.upper() in options:
        return answer.upper()
    by_text = [k for k, v in options.items() if v == answer]
    if by_text:
        return by_text[0]
    if len(answer) > 1 and all(c in options for c in answer.upper()):
        raise RecordError(f"answer '{answer}' has several letters (multi-answer question)",
                          "keep single-answer questions only")
    raise RecordError(f"answer '{answer}' is neither an option letter ({', '.join(options)}) nor an option's text",
                      "give the letter of the correct option")


def mcq(r: dict) -> dict:
    options = _options(r["options"])
    return {"question": _text(r["question"], "question").strip(), "options": options,
            "answer": _choice(r.get("answer_idx", r["answer"]), options)}


def ceval(r: dict) -> dict:
    """C-Eval / CMMLU columns: question, A, B, C, D, answer (a letter)."""
    return mcq({"question": r["question"], "answer": r["answer"],
                "options": {k: r[k] for k in LETTERS if k in r and r[k] is not None}})


def cmexam(r: dict) -> dict:
    """CMExam columns: Question, Options ("A xxx\nB yyy" lines), Answer (a letter)."""
    return mcq({"question": r["Question"], "options": r["Options"], "answer": r["Answer"]})


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    keys: FrozenSet[str]  # keys a record must have for this format to be detected
    convert: Callable[[dict], dict]
    example: str
    declared_only: bool = False  # same keys as a plainer format: used only when named (data.format=...)


FORMATS: Dict[str, Format] = {f.name: f for f in [
    Format("sharegpt", "chat", frozenset({"conversations"}), sharegpt,
           '{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}'),
    Format("messages", "chat", frozenset({"messages"}), openai_messages,
           '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'),
    Format("alpaca", "chat", frozenset({"instruction", "output"}), alpaca,
           '{"instruction": "...", "input": "", "output": "...", "history": []}'),
    Format("moss", "chat", frozenset({"plain_text"}), moss,
           '{"plain_text": "[Human]: ...<eoh> [MOSS]: ...<eoa> [Human]: ...<eoh> [MOSS]: ...<eoa>"}'),
    Format("belle_multiturn", "chat", frozenset({"instruction", "output"}), belle_multiturn,
           '{"instruction": "Human:...\\nAssistant:...\\nHuman:...\\nAssistant:", "input": "", "output": "..."}',
           declared_only=True),
    Format("text", "text", frozenset({"text"}), text, '{"text": "..."} or a .txt file'),
    Format("sharegpt_preference", "preference", frozenset({"conversations", "chosen", "rejected"}),
           sharegpt_preference, '{"conversations": [{"from": "human", "value": "..."}], "chosen": "...", '
                                '"rejected": "..."}'),
    Format("trl_preference", "preference", frozenset({"prompt", "chosen", "rejected"}), trl_preference,
           '{"prompt": "...", "chosen": "...", "rejected": "..."}'),
    Format("hh_preference", "preference", frozenset({"prompt", "chosen", "rejected"}), hh_preference,
           '{"prompt": "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:", "chosen": " ...", '
           '"rejected": " ..."}', declared_only=True),
    Format("qa_preference", "preference", frozenset({"question", "response_chosen", "response_rejected"}),
           qa_preference, '{"system": "", "history": [], "question": "...", "response_chosen": "...", '
                          '"response_rejected": "..."}'),
    Format("unpaired", "unpaired", frozenset({"prompt", "completion", "label"}), unpaired,
           '{"prompt": "...", "completion": "...", "label": true}'),
    Format("prompt", "prompt", frozenset({"prompt"}), prompt_only, '{"prompt": "...", "answer": "..."}'),
    Format("question", "prompt", frozenset({"question"}), prompt_only, '{"question": "...", "answer": "..."}'),
    Format("mcq", "mcq", frozenset({"question", "options", "answer"}), mcq,
           '{"question": "...", "options": {"A": "...", "B": "..."}, "answer": "B"}'),
    Format("ceval", "mcq", frozenset({"question", "A", "B", "answer"}), ceval,
           '{"question": "...", "A": "...", "B": "...", "C": "...", "D": "...", "answer": "B"}'),
    Format("cmexam", "mcq", frozenset({"Question", "Options", "Answer"}), cmexam,
           '{"Question": "...", "Options": "A ...\\nB ...", "Answer": "B"}'),
]}


def candidates(record: dict) -> List[str]:
    """Formats whose keys the record has, keeping only the most specific (a superset beats its subset).
    Declared-only formats share their keys with a plainer format, so they are never guessed."""
    fits = [f for f in FORMATS.values() if f.keys <= record.keys() and not f.declared_only]
    return [f.name for f in fits if not any(f.keys < g.keys for g in fits)]


def detect(record: dict, accepted: Optional[List[str]] = None) -> str:
    found = candidates(record)
    if accepted is not None and len(found) > 1:
        found = [name for name in found if name in accepted] or found
    if len(found) == 1:
        return found[0]
    if not found:
        raise RecordError(f"no known format has these keys: {sorted(record)}",
                          "rename the columns (data.columns={their: ours}) to one of: " +
                          "; ".join(f"{f.name} {f.example}" for f in FORMATS.values()))
    raise RecordError(f"the record fits several formats: {', '.join(found)}",
                      f"choose one with data.format=<{'|'.join(found)}>")


def convert(format_name: str, record: dict) -> dict:
    fmt = FORMATS[format_name]
    missing = sorted(fmt.keys - record.keys())
    if format_name == "question" and "prompt" in record:
        missing = []
    if missing:
        raise RecordError(f"missing key(s) {missing} for format '{format_name}'",
                          f"write the record as {fmt.example}")
    return fmt.convert(record)
