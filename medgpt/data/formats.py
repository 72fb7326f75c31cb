"""Pure converters: one source record (a dict) -> one normalised record, or a RecordError saying why not.

Normalised kinds (what stages consume):
    chat        {"messages": [{"role", "content"}, ...]}                    sft, eval
    text        {"text": str}                                               pt
    preference  {"prompt": [msgs], "chosen": [msg], "rejected": [msg]}      rm, dpo, orpo, simpo, kto
    unpaired    {"prompt": [msgs], "completion": [msg], "label": bool}      kto
    prompt      {"prompt": [msgs], "answer": str | None}                    grpo, ppo, eval (QA)
    mcq         {"question": str, "options": {"A": str, ...}, "answer": "C"}  eval

    python -c "from medgpt.data.formats import convert; print(convert('alpaca', {'instruction': 'hi', 'output': 'yo'}))"
"""
from __future__ import annotations

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
    "function_call": "function_call", "observation": "observation", "tool": "observation",
}
# Turns that answer / ask: tool calls sit on the assistant side, tool results on the user side.
ASSISTANT_SIDE = {"assistant", "function_call"}
USER_SIDE = {"user", "observation"}


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}",
                          f"write {what} as a JSON string")
    return value


def check_turns(messages: List[dict], need_assistant_last: bool = True) -> List[dict]:
    """Roles alternate user-side / assistant-side after an optional leading system turn."""
    if not messages:
        raise RecordError("the conversation is empty", "add at least one user and one assistant turn")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise RecordError("a system turn appears after the first turn", "put the system prompt first, once")
    expected = USER_SIDE
    for i, m in enumerate(body):
        if m["role"] not in expected:
            want = "user/observation" if expected is USER_SIDE else "assistant/function_call"
            raise RecordError(f"turn {i + 1} is '{m['role']}' but a {want} turn was expected (turns out of order)",
                              "alternate user and assistant turns, starting with the user")
        if m["role"] in ASSISTANT_SIDE and not m["content"].strip():
            raise RecordError(f"turn {i + 1} is an empty {m['role']} turn", "give every assistant turn some text")
        expected = ASSISTANT_SIDE if expected is USER_SIDE else USER_SIDE
    if need_assistant_last:
        if not any(m["role"] in ASSISTANT_SIDE for m in body):
            raise RecordError("the conversation has no assistant turn", "add the assistant's answer")
        if body[-1]["role"] not in ASSISTANT_SIDE:
            raise RecordError("the conversation ends with a user turn", "end with the assistant's answer")
    return messages


def _turns(items, role_key: str, content_key: str, what: str) -> List[dict]:
    if not isinstance(items, list):
        raise RecordError(f"'{what}' must be a list of turns", f"write '{what}' as a JSON list")
    out = []
    for i, turn in enumerate(items):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise RecordError(f"turn {i + 1} of '{what}' needs keys '{role_key}' and '{content_key}'",
                              f"write each turn as {{\"{role_key}\": ..., \"{content_key}\": ...}}")
        role = ROLE_SYNONYMS.get(str(turn[role_key]).strip().lower())
        if role is None:
            raise RecordError(f"turn {i + 1} has unknown role '{turn[role_key]}'",
                              f"use one of: {', '.join(sorted(ROLE_SYNONYMS))}")
        out.append({"role": role, "content": _text(turn[content_key], f"turn {i + 1} '{content_key}'")})
    return out


def sharegpt(r: dict) -> dict:
    return {"messages": check_turns(_system(r) + _turns(r["conversations"], "from", "value", "conversations"))}


def openai_messages(r: dict) -> dict:
    return {"messages": check_turns(_system(r) + _turns(r["messages"], "role", "content", "messages"))}


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
    messages = _system(r) + _history(r) + [{"role": "user", "content": question},
                                           {"role": "assistant", "content": _text(r["output"], "output")}]
    return {"messages": check_turns(messages)}


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
    if isinstance(value, list):  # TRL's conversational form: [{"role": "assistant", "content": ...}]
        msgs = _turns(value, "role", "content", what)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise RecordError(f"'{what}' must be one assistant turn", f"write '{what}' as a string")
        content = msgs[0]["content"]
    else:
        content = _text(value, what)
    if not content.strip():
        raise RecordError(f"'{what}' is empty", f"give '{what}' text")
    return [{"role": "assistant", "content": content}]


def _pair(prompt: List[dict], chosen, rejected) -> dict:
    check_turns(prompt, need_assistant_last=False)
    if prompt[-1]["role"] not in USER_SIDE:
        raise RecordError("the prompt must end with a user turn", "end the prompt with the question")
    chosen, rejected = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise RecordError("chosen and rejected are identical", "remove the pair: it teaches nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _prompt(value, what: str = "prompt") -> List[dict]:
    if isinstance(value, list):
        return _turns(value, "role", "content", what)
    if not _text(value, what).strip():
        raise RecordError(f"'{what}' is empty", f"give '{what}' text")
    return [{"role": "user", "content": value}]


def sharegpt_preference(r: dict) -> dict:
    prompt = _system(r) + _turns(r["conversations"], "from", "value", "conversations")
    return _pair(prompt, r["chosen"], r["rejected"])


def trl_preference(r: dict) -> dict:
    return _pair(_system(r) + _prompt(r["prompt"]), r["chosen"], r["rejected"])


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
    check_turns(prompt, need_assistant_last=False)
    return {"prompt": prompt, "completion": _answer(r["completion"], "completion"), "label": label}


def prompt_only(r: dict) -> dict:
    question = r["prompt"] if "prompt" in r else r["question"]
    prompt = _system(r) + _prompt(question, "prompt" if "prompt" in r else "question")
    answer = r.get("answer")
    return {"prompt": check_turns(prompt, need_assistant_last=False),
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
