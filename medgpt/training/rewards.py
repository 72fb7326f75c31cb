"""Reward functions for GRPO/RLOO, chosen in config by `_target_` (stage.reward_funcs). TRL calls each as
`f(prompts=..., completions=..., answer=..., **columns) -> list[float | None]` and logs it under its __name__.

    python train.py stage=grpo 'stage.reward_funcs=[{_target_: medgpt.training.rewards.answer_accuracy}]'

A target with a `completions` parameter is itself the reward function (its other parameters are set from the
node: `{_target_: medgpt.training.rewards.length_penalty, max_chars: 300}`); any other target is a factory called with the
node's keys that returns one (`{_target_: medgpt.training.rewards.reward_model, path: <run of stage=rm>}`).
"""
from __future__ import annotations

import functools
import inspect
import re
import string
import unicodedata
from typing import Any, List, Optional

from medgpt.config import import_object
from medgpt.errors import UserError
from medgpt.modeling.load import LoadPolicy, check_source, load_failure, resolve_path
from medgpt.runs import adapter_base, adapter_config, model_architectures, run_info

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_ANSWER = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.DOTALL)
# a choice letter stated as the answer: "Answer: B", "the answer is (B)", "答案：B", "答案是 B", "option B"
STATED_CHOICE = re.compile(r"(?:answer|option|choice|答案|选项|选)\s*"
                           r"(?:is|:|：|为|是|should be|would be)?\s*[:：]?\s*"
                           r"([(\[（])?([A-Z])(?![A-Za-z])", re.IGNORECASE)
LEADING_CHOICE = re.compile(r"^\s*([(\[（])?([A-Z])(?:[)\]）.:：,、]|$)")  # "B", "B.", "(B) ...", "B: ..."
NUMBER = re.compile(r"^[-+]?\d+(?:[.,]\d+)?(?:e[-+]?\d+)?%?$", re.IGNORECASE)
PUNCTUATION = set(string.punctuation) | {"。", "，", "！", "？", "：", "；", "、", "“", "”", "（", "）"}


def completion_text(completion) -> str:
    """A completion as TRL passes it: a string, or a conversational list of messages (assistant content joined)."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def extract_answer(text: str) -> str:
    """The text inside the last <answer>…</answer>, else the whole completion."""
    tagged = ANSWER_TAG.findall(text)
    return (tagged[-1] if tagged else text).strip()


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = "".join(c for c in text if c not in PUNCTUATION)
    return " ".join(text.split())


def _number(text: str) -> Optional[float]:
    text = text.strip().replace(" ", "")
    if not NUMBER.match(text):
        return None
    return float(text.rstrip("%").replace(",", ""))  # "1,000" is a thousand


def is_correct(predicted: str, gold: str, max_words: int = 6) -> bool:
    """Numbers compare by value (1e-6 relative; the prediction's last number counts); short gold answers match
    exactly or as a whole phrase inside the prediction ('a cardiologist' matches 'cardiologist'); long gold answers
    need an exact (normalised) match."""
    gold_number = _number(unicodedata.normalize("NFKC", gold).strip().rstrip("."))
    if gold_number is not None:
        numbers = re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?%?", unicodedata.normalize("NFKC", predicted))
        predicted_number = _number(numbers[-1]) if numbers else None
        return predicted_number is not None and abs(predicted_number - gold_number) <= 1e-6 * max(1, abs(gold_number))
    p, g = normalize(predicted), normalize(gold)
    if not g:
        return False
    if p == g:
        return True
    if len(g.split()) <= max_words and len(g) <= 40:
        return re.search(rf"(?<!\w){re.escape(g)}(?!\w)", p) is not None
    return False


def answer_accuracy(completions, answer=None, **kwargs) -> List[Optional[float]]:
    """1.0 when the completion's answer (inside <answer> tags if present) matches the record's `answer`, else 0.0;
    None (ignored by TRL) for records without an answer."""
    answers = answer if answer is not None else [None] * len(completions)
    return [None if gold is None else float(is_correct(extract_answer(completion_text(c)), str(gold)))
            for c, gold in zip(completions, answers)]


def think_answer_format(completions, **kwargs) -> List[float]:
    """1.0 for exactly `<think>…</think><answer>…</answer>` (whitespace between allowed), else 0.0."""
    return [1.0 if THINK_ANSWER.match(completion_text(c)) else 0.0 for c in completions]


def choice_letter(text: str, letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """The option letter a completion answers with, or None: inside the last <answer>…</answer> if present; a letter
    stated as the answer ("Answer: B", "the answer is (B)", "答案：B"); else a letter opening the answer ("B",
    "(B) Cardiologist", "B. …"). A stray capital elsewhere ("I think…") is not an answer."""
    answer = extract_answer(text)
    for pattern in (STATED_CHOICE, LEADING_CHOICE):
        for found in pattern.finditer(unicodedata.normalize("NFKC", answer)):
            bracket, letter = found.group(1), found.group(2)
            if letter.upper() in letters and (letter.isupper() or bracket):  # "answer is a rash" names no option
                return letter.upper()
    return None


def choice_accuracy(completions, answer=None, letters: str = "ABCDEFGHIJ", **kwargs) -> List[Optional[float]]:
    """Multiple choice: 1.0 when the completion's option letter (choice_letter) is the record's answer letter ("C",
    or "C. text"), 0.0 when it is another letter or none; None (ignored by TRL) for records without an answer."""
    answers = answer if answer is not None else [None] * len(completions)
    out: List[Optional[float]] = []
    for completion, gold in zip(completions, answers):
        gold_letter = choice_letter(str(gold), letters) if gold not in (None, "") else None
        out.append(None if gold_letter is None else float(choice_letter(completion_text(completion), letters)
                                                          == gold_letter))
    return out


def contains_keyword(completions, keywords: Any = (), **kwargs) -> List[float]:
    """1.0 when the completion contains any of `keywords` (case-insensitive substring), else 0.0: e.g. a safety
    reminder (`keywords: [doctor, 医生]`); also the easy reward of the learning tests."""
    words = [keywords] if isinstance(keywords, str) else list(keywords)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise UserError(f"contains_keyword: keywords={keywords!r}; give one or more non-empty strings")
    lowered = [w.lower() for w in words]
    return [1.0 if any(w in completion_text(c).lower() for w in lowered) else 0.0 for c in completions]


def length_penalty(completions, max_chars: int = 512, **kwargs) -> List[float]:
    """0 up to max_chars characters, then falls linearly to -1 at twice that (clipped at -1)."""
    if max_chars <= 0:
        raise UserError(f"length_penalty: max_chars={max_chars} must be positive")
    return [-min(1.0, max(0, len(completion_text(c)) - max_chars) / max_chars) for c in completions]


def load_reward_model(path: str, policy: LoadPolicy = LoadPolicy()):
    """A stage=rm run (folder or final/; full weights or a LoRA adapter, merged here) -> (model, tokenizer), frozen.
    policy: the run's consent (medgpt.modeling.load.LoadPolicy.of_run), never the folder's medgpt.json."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = check_reward_model(path)
    base = adapter_base(path)
    check_source(path, policy, what="stage.reward_model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=policy.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            base or path, num_labels=1, dtype=torch.float32, trust_remote_code=policy.trust_remote_code,
            use_safetensors=None if policy.allow_pickle else True)
    except (OSError, ValueError) as e:
        raise load_failure(e, "stage.reward_model", base or path, policy) from None
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def check_reward_model(path: Optional[str], what: str = "stage.reward_model") -> str:
    """The resolved final/ of a reward model run, or a UserError saying what to pass (no model is loaded)."""
    from pathlib import Path

    if not path:
        raise UserError(f"{what} is not set: train one with `python train.py stage=rm ...` and pass "
                        f"{what}=<its run folder or final/>")
    resolved = resolve_path(str(path))
    if not Path(resolved).is_dir():
        raise UserError(f"{what}={path}: no such folder; give the run folder or final/ of a stage=rm run")
    info = run_info(resolved)
    architectures = model_architectures(resolved)
    is_reward = info.get("stage") == "rm" or any(a.endswith("ForSequenceClassification") for a in architectures)
    adapter = adapter_config(resolved)
    if adapter is not None:
        is_reward = is_reward or adapter.get("task_type") == "SEQ_CLS"
    if not is_reward:
        raise UserError(f"{what}={path} is not a reward model (stage={info.get('stage', '?')}, "
                        f"architectures={architectures}); give the output of a stage=rm run")
    return resolved


def reward_model(path: str, batch_size: int = 8):
    """A trained reward model (stage=rm) as a reward function: scores prompt + completion with its chat template."""
    import torch

    model, tokenizer = load_reward_model(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)

    def score(prompts, completions, **kwargs) -> List[float]:
        texts = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list):
                texts.append(tokenizer.apply_chat_template(
                    prompt + [{"role": "assistant", "content": completion_text(completion)}], tokenize=False))
            else:
                texts.append(prompt + completion_text(completion))
        scores: List[float] = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                              add_special_tokens=False).to(device)
            with torch.no_grad():
                scores += model(**batch).logits[:, 0].float().tolist()
        return scores

    score.__name__ = "reward_model"
    return score


def instantiate_reward_funcs(nodes: Any) -> list:
    """stage.reward_funcs ({_target_: ...} nodes) -> named callables (see the module docstring)."""
    from hydra.utils import instantiate

    out = []
    for node in list(nodes or []):
        target = node.get("_target_") if hasattr(node, "get") else None
        if not target:
            raise UserError(f"stage.reward_funcs: each entry needs a _target_, got {node}")
        fn = import_object(target)
        is_reward_fn = "completions" in inspect.signature(fn).parameters
        made = instantiate(node, _partial_=True) if is_reward_fn else instantiate(node, _convert_="all")
        if isinstance(made, functools.partial):
            functools.update_wrapper(made, made.func)
        if not callable(made):
            raise UserError(f"stage.reward_funcs: {target} gave a {type(made).__name__}, not a reward function")
        out.append(made)
    return out


def check_answers(nodes: Any, rows: list) -> None:
    """An answer-checking reward (answer_accuracy, choice_accuracy) needs every prompt record to carry its answer, and
    choice_accuracy an option letter in it: say which records do not."""
    targets = {node.get("_target_") for node in list(nodes or []) if hasattr(node, "get")}
    for name in ("answer_accuracy", "choice_accuracy"):
        if f"{__name__}.{name}" not in targets:
            continue
        missing = [i + 1 for i, row in enumerate(rows) if row.get("answer") in (None, "")]
        if missing:
            raise UserError(f"{len(missing)} of {len(rows)} prompt records have no 'answer' (first: record "
                            f"{missing[0]}) but the reward medgpt.training.rewards.{name} needs one. Fix: add "
                            f"\"answer\" to those records, or drop that reward from stage.reward_funcs")
        if name == "choice_accuracy":
            no_letter = [i + 1 for i, row in enumerate(rows) if choice_letter(str(row["answer"])) is None]
            if no_letter:
                raise UserError(f"{len(no_letter)} of {len(rows)} prompt records have an 'answer' without an option "
                                f"letter (first: record {no_letter[0]}: {str(rows[no_letter[0] - 1]['answer'])[:40]!r}) "
                                f"but medgpt.training.rewards.choice_accuracy compares letters. Fix: answer with the "
                                f"letter (\"C\" or \"C. text\"), or use answer_accuracy")


def check_reward_funcs(nodes: Any) -> None:
    """Cheap check before any model loads: every target imports; reward-model paths point at reward models."""

    for node in list(nodes or []):
        target = node.get("_target_") if hasattr(node, "get") else None
        if not target:
            raise UserError(f"stage.reward_funcs: each entry needs a _target_, got {node}")
        import_object(target)
        if target == f"{__name__}.reward_model":
            check_reward_model(node.get("path"), what="stage.reward_funcs[reward_model].path")
