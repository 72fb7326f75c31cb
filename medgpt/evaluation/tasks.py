"""Eval files -> tasks (one per file, by data kind) -> per-example predictions and metrics.

    mcq         accuracy by log-likelihood of each option (letter or text), zero/few-shot, chat template
    qa          greedy answer vs reference: exact_match, f1, rouge_l (Chinese by character), optional judge
    chat, text  perplexity (chats: assistant tokens only)
    preference  accuracy and margin of a reward model's score, or of a policy's implicit DPO reward

Files are read and validated before any model is loaded.

    python train.py stage=eval model.path=outputs/runs/sft-tiny-cpu/<stamp> data=eval_demo
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from medgpt.config import RunSettings
from medgpt.data.formats import FORMATS
from medgpt.data.loading import expand_files, load_split
from medgpt.data.tokenize import IGNORE, chat_labels, template_kwargs
from medgpt.errors import DataError, UserError
from medgpt.evaluation import metrics as m, prompts, scoring
from medgpt.evaluation.harness import run_lm_eval
from medgpt.evaluation.judge import judge_all
from medgpt.evaluation.report import publish
from medgpt.modeling.load import LoadPolicy, load_for_inference, resolve_path
from medgpt.modeling.templates import end_of_turn
from medgpt.runs import predictions_file

log = logging.getLogger(__name__)
EVAL_FORMATS = sorted(name for name, f in FORMATS.items() if f.kind != "unpaired")
KINDS = {"mcq": "mcq", "prompt": "qa", "chat": "chat", "text": "text", "preference": "preference"}
SCORINGS = ("letter", "text")


@dataclass
class Task:
    name: str  # the file's stem: metric keys are <name>/<metric>
    kind: str  # mcq | qa | chat | text | preference
    path: str
    rows: List[dict]


def load_tasks(cfg, files: List[str]) -> List[Task]:
    """One task per file; every record validated (DataError with file:line), no model needed."""
    if cfg.eval.mcq_scoring not in SCORINGS:
        raise UserError(f"eval.mcq_scoring={cfg.eval.mcq_scoring}: use one of {', '.join(SCORINGS)}")
    tasks: List[Task] = []
    names = Counter()
    for path in expand_files(files, "eval files"):
        records = load_split([path], accepted=EVAL_FORMATS, data_format=cfg.data.format,
                             columns=dict(cfg.data.columns), on_bad_record=cfg.data.on_bad_record,
                             max_samples=cfg.data.max_samples, system_prompt=cfg.data.system_prompt,
                             stage="evaluation")
        kind = KINDS[FORMATS[records.formats.most_common(1)[0][0]].kind]
        if kind == "qa" and any(row["answer"] is None for row in records.rows):
            raise DataError(path, None, "a question has no reference answer",
                            'give every record an "answer" to score generated answers against')
        names[path.stem] += 1
        name = path.stem if names[path.stem] == 1 else f"{path.stem}_{names[path.stem]}"
        tasks.append(Task(name, kind, str(path), records.rows))
    return tasks


def evaluate(cfg, run_dir: Path, model, tokenizer, tasks: List[Task], settings: RunSettings,
             reference: Optional[str] = None) -> Dict:
    """Score every task; write predictions/<task>.jsonl; return flat metrics (<task>/<metric> and aggregates).
    settings: the run's (max_length, seed, template). reference: the model a policy's implicit reward is measured
    against (preference files), when not a LoRA."""

    model.eval()
    ctx = Context(cfg, settings, model, tokenizer, reference)
    results: Dict[str, Dict] = {}
    for task in tasks:
        log.info("eval %s: %d %s records", task.name, len(task.rows), task.kind)
        examples, scores = SCORERS[task.kind](ctx, task)
        results[task.name] = {"kind": task.kind, "n": len(task.rows), **scores}
        if cfg.eval.predictions:
            _write_jsonl(predictions_file(run_dir, task.name), examples)
    flat = {f"{name}/{key}": value for name, res in results.items() for key, value in res.items()}
    flat.update(aggregate(list(results.values())))
    if cfg.eval.lm_eval_tasks:
        flat.update(run_lm_eval(cfg, settings, model, tokenizer, Path(run_dir)))
    return flat


def after_train_tasks(cfg) -> List[Task]:
    """eval_after_train=true: eval.files, validated before training starts."""
    if not cfg.eval.files:
        raise UserError("eval_after_train=true needs eval.files=[...] (mcq/qa/chat/text/preference files)")
    return load_tasks(cfg, list(cfg.eval.files))


def evaluate_after_train(cfg, run_dir: Path, model, tokenizer, tasks: List[Task], settings: RunSettings) -> Dict:
    """The trained model on eval.files; keys eval/<metric> (metrics.json, W&B), reference = the starting model."""

    reference = resolve_path(cfg.model.path, cfg.model.tiny)
    scores = {f"eval/{k}": v
              for k, v in evaluate(cfg, run_dir, model, tokenizer, tasks, settings, reference).items()}
    publish(scores, run_dir)
    return scores


class Context:
    """What every scorer needs: config, the run's settings (max_length, seed, template), model, tokenizer and stop
    tokens."""

    def __init__(self, cfg, settings: RunSettings, model, tokenizer, reference: Optional[str]):
        self.cfg, self.model, self.tokenizer, self.reference = cfg, model, tokenizer, reference
        self.max_length, self.seed = settings.max_length, settings.seed
        self.pad_id = tokenizer.pad_token_id
        eot = end_of_turn(settings.template)
        self.stop_ids = sorted({tokenizer.convert_tokens_to_ids(eot), tokenizer.eos_token_id} - {None})
        self.batch_size = cfg.eval.batch_size
        self.template_kwargs = template_kwargs(settings)  # as at training: e.g. enable_thinking

    def ids(self, messages: List[dict], tools: Optional[List[dict]] = None) -> List[int]:
        text = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                  tokenize=False, **self.template_kwargs)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def labels(self, messages: List[dict], tools: Optional[List[dict]] = None):
        """(ids, labels) of a conversation, rendered as SFT renders it: with its tool definitions."""
        return chat_labels(self.tokenizer, messages, tools, **self.template_kwargs)

    def reply_example(self, messages: List[dict], reply: str, tools: Optional[List[dict]] = None) -> scoring.Example:
        """Prompt + one assistant reply, tokenized as SFT does; labels only on that reply (and its end token)."""
        ids, labels = self.labels(messages + [{"role": "assistant", "content": reply}], tools)
        n_prompt = len(self.ids(messages, tools))
        labels = [IGNORE] * n_prompt + labels[n_prompt:]
        return self.fit(ids, labels)

    def fit(self, ids: List[int], labels: List[int]) -> scoring.Example:
        """Keep the last max_length tokens: what is scored sits at the end."""
        return ids[-self.max_length:], labels[-self.max_length:]

    def logprobs(self, examples, model=None):
        return scoring.token_logprobs(model or self.model, examples, self.pad_id, self.batch_size)


def score_mcq(ctx: Context, task: Task):
    cfg = ctx.cfg
    scoring_mode, out, flat = cfg.eval.mcq_scoring, [], []
    for i, row in enumerate(task.rows):
        shots = prompts.shots(task.rows, i, cfg.eval.few_shot, ctx.seed)
        messages = prompts.mcq_messages(row, shots, scoring_mode, cfg.data.system_prompt)
        flat += [ctx.reply_example(messages, prompts.mcq_target(row, letter, scoring_mode))
                 for letter in row["options"]]
    scores = iter(ctx.logprobs(flat))
    correct = 0
    for row in task.rows:
        per_option = {}
        for letter in row["options"]:
            total, n = next(scores)
            per_option[letter] = total / max(n, 1) if scoring_mode == "text" else total
        prediction = max(per_option, key=per_option.get)
        correct += prediction == row["answer"]
        out.append({"question": row["question"], "options": row["options"], "prediction": prediction,
                    "gold": row["answer"], "score": float(prediction == row["answer"]),
                    "option_logprobs": {k: round(v, 4) for k, v in per_option.items()}})
    return out, {"accuracy": correct / len(task.rows)}


def score_qa(ctx: Context, task: Task):
    cfg, tok = ctx.cfg, ctx.tokenizer
    messages = [prompts.qa_messages(row, prompts.shots(task.rows, i, cfg.eval.few_shot, ctx.seed),
                                    cfg.data.system_prompt) for i, row in enumerate(task.rows)]
    answers = scoring.generate(ctx.model, [ctx.ids(msgs)[-ctx.max_length:] for msgs in messages], pad_id=ctx.pad_id,
                               stop_ids=ctx.stop_ids, max_new_tokens=cfg.eval.max_new_tokens,
                               batch_size=ctx.batch_size)
    out = []
    for row, new_ids in zip(task.rows, answers):
        prediction = tok.decode(new_ids, skip_special_tokens=True).strip()
        out.append({"question": prompts.question_of(row), "prediction": prediction, "gold": row["answer"],
                    "exact_match": m.exact_match(prediction, row["answer"]),
                    "f1": m.token_f1(prediction, row["answer"]), "rouge_l": m.rouge_l(prediction, row["answer"])})
        out[-1]["score"] = out[-1]["f1"]
    result = {key: _mean(out, key) for key in ("exact_match", "f1", "rouge_l")}
    if cfg.eval.judge_url:
        for example, grade in zip(out, judge_all(cfg.eval, out)):
            example["judge"] = grade
        result["judge"] = _mean(out, "judge")
    return out, result


def score_perplexity(ctx: Context, task: Task):
    if task.kind == "chat":
        examples = [ctx.fit(*ctx.labels(row["messages"], row.get("tools"))) for row in task.rows]
    else:
        examples = []
        for row in task.rows:
            ids = ctx.tokenizer(row["text"], add_special_tokens=False)["input_ids"][:ctx.max_length]
            examples.append((ids, list(ids)))
    scores = ctx.logprobs(examples)
    out = [{"question": prompts.question_of(row), "nll": round(-total / max(n, 1), 4), "tokens": n,
            "score": round(-total / max(n, 1), 4)} for row, (total, n) in zip(task.rows, scores)]
    tokens = sum(n for _, n in scores)
    nll = -sum(total for total, _ in scores) / max(tokens, 1)
    return out, {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "tokens": tokens}


def score_preference(ctx: Context, task: Task):
    if _is_reward_model(ctx.model):
        seqs = [ctx.labels(row["prompt"] + row[side], row.get("tools"))[0][-ctx.max_length:]
                for row in task.rows for side in ("chosen", "rejected")]
        rewards = scoring.reward_scores(ctx.model, seqs, ctx.pad_id, ctx.batch_size)
    else:
        examples = [ctx.reply_example(row["prompt"], row[side][0]["content"], row.get("tools"))
                    for row in task.rows for side in ("chosen", "rejected")]
        policy = [total for total, _ in ctx.logprobs(examples)]
        reference = _reference_logprobs(ctx, examples)
        rewards = [ctx.cfg.eval.beta * (p - r) for p, r in zip(policy, reference)]
    out = []
    for k, row in enumerate(task.rows):
        chosen, rejected = rewards[2 * k], rewards[2 * k + 1]
        out.append({"question": prompts.question_of(row), "chosen": row["chosen"][0]["content"],
                    "rejected": row["rejected"][0]["content"], "chosen_reward": round(chosen, 4),
                    "rejected_reward": round(rejected, 4), "margin": round(chosen - rejected, 4),
                    "score": float(chosen > rejected)})
    return out, {"accuracy": _mean(out, "score"), "margin": _mean(out, "margin")}


def _is_reward_model(model) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__.endswith("ForSequenceClassification")


def _reference_logprobs(ctx: Context, examples) -> List[float]:
    """log p_ref of each reply: LoRA -> adapters switched off; else eval.reference (auto: ctx.reference)."""
    choice = ctx.cfg.eval.reference
    if choice in (None, "none"):
        return [0.0] * len(examples)
    if choice == "auto" and hasattr(ctx.model, "disable_adapter"):
        with ctx.model.disable_adapter():
            return [total for total, _ in ctx.logprobs(examples)]
    path = ctx.reference if choice == "auto" else choice
    if not path:
        log.warning("no reference model known: preference rewards are beta * log p_policy (eval.reference=<path>)")
        return [0.0] * len(examples)

    try:
        reference = load_for_inference(path, policy=LoadPolicy.of_run(ctx.cfg))[0]
        reference = reference.to(scoring.device_of(ctx.model))
    except OSError as e:
        raise UserError(f"eval.reference: cannot load the reference model {path} ({e}); give "
                        f"eval.reference=<path> or eval.reference=none") from None
    return [total for total, _ in ctx.logprobs(examples, model=reference)]


SCORERS = {"mcq": score_mcq, "qa": score_qa, "chat": score_perplexity, "text": score_perplexity,
           "preference": score_preference}
AGGREGATE = {  # kind -> (metric, aggregate key); averaged over tasks weighted by examples (perplexity: tokens)
    "mcq": [("accuracy", "mcq_accuracy")],
    "qa": [("exact_match", "qa_exact_match"), ("f1", "qa_f1"), ("rouge_l", "qa_rouge_l"), ("judge", "qa_judge")],
    "preference": [("accuracy", "pref_accuracy"), ("margin", "pref_margin")],
}


def aggregate(results: List[Dict]) -> Dict[str, float]:
    out = {}
    for kind, pairs in AGGREGATE.items():
        of_kind = [r for r in results if r["kind"] == kind]
        for metric, key in pairs:
            scored = [r for r in of_kind if r.get(metric) is not None]
            if scored:
                out[key] = sum(r[metric] * r["n"] for r in scored) / sum(r["n"] for r in scored)
    texts = [r for r in results if r["kind"] in ("chat", "text")]
    tokens = sum(r["tokens"] for r in texts)
    if tokens:
        out["nll"] = sum(r["nll"] * r["tokens"] for r in texts) / tokens
        out["perplexity"] = math.exp(min(out["nll"], 50.0))
    return out


def _mean(rows: List[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _write_jsonl(path: Path, rows: List[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
