"""Eval prompts as chat messages, so the model's own chat template renders them (zero- or few-shot).

Few-shot examples are other solved items of the same file, shown as earlier user/assistant turns.

    python -c "from medgpt.evaluation.prompts import mcq_prompt as p; print(p({'question': 'Q?', 'options': {'A': 'x'}}))"
"""
from __future__ import annotations

import random
from typing import List, Optional

from medgpt.evaluation.metrics import has_cjk

INSTRUCTION = {"en": "Answer with the letter of the correct option.", "zh": "请只回答正确选项的字母。"}


def mcq_prompt(row: dict) -> str:
    options = [f"{letter}. {text}" for letter, text in row["options"].items()]
    language = "zh" if has_cjk(row["question"]) else "en"
    return "\n".join([row["question"], *options, INSTRUCTION[language]])


def mcq_target(row: dict, letter: str, scoring: str) -> str:
    """What the assistant would say for option `letter`: the letter itself, or the option's text."""
    return letter if scoring == "letter" else row["options"][letter]


def shots(rows: List[dict], index: int, k: int, seed: int) -> List[dict]:
    """k other items of the file, the same ones every run (seeded per item)."""
    others = [r for i, r in enumerate(rows) if i != index]
    return random.Random(seed * 100003 + index).sample(others, min(k, len(others)))


def _system(system: Optional[str]) -> List[dict]:
    return [{"role": "system", "content": system}] if system else []


def mcq_messages(row: dict, examples: List[dict], scoring: str, system: Optional[str] = None) -> List[dict]:
    messages = _system(system)
    for shot in examples:
        messages += [{"role": "user", "content": mcq_prompt(shot)},
                     {"role": "assistant", "content": mcq_target(shot, shot["answer"], scoring)}]
    return messages + [{"role": "user", "content": mcq_prompt(row)}]


def qa_messages(row: dict, examples: List[dict], system: Optional[str] = None) -> List[dict]:
    """row["prompt"] is a list of turns (maybe with its own system turn); shots go before its last user turn."""
    prompt = list(row["prompt"])
    head = prompt[:1] if prompt[0]["role"] == "system" else _system(system)
    body = prompt[1:] if prompt[0]["role"] == "system" else prompt
    turns = []
    for shot in examples:
        turns += [{"role": "user", "content": shot["prompt"][-1]["content"]},
                  {"role": "assistant", "content": shot["answer"]}]
    return head + turns + body


def question_of(row: dict) -> str:
    """The last user turn of a prompt-like record, for the predictions file."""
    prompt = row.get("prompt") or row.get("messages") or []
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return row.get("question") or (users[-1] if users else row.get("text", "")[:200])
