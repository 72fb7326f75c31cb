"""Benchmark suites: score a model on a preset group of public benchmarks (conf/eval/<suite>.yaml), both ways,
and write one table (per benchmark + macro average) into the run folder, metrics.json and W&B.

    loglik    the option (letter, or yes / no / maybe) with the highest log-likelihood as the assistant's reply
    generate  greedy answer (left-padded batches), the answer read by the benchmark's versioned extraction rule;
              a reply the rule cannot read is scored wrong and counted (gen_unparsed)

Backends (eval.backend): hf (batched: one forward pass per question when every choice is one token, else one per
choice; left-padded batched generation), vllm (on CUDA, `pip install 'medgpt[vllm]'`), auto (vllm when it is
installed and CUDA is there, else hf), or `<module>:<Class>` implementing `Scorer` (the seam the tests use).

    python train.py stage=eval eval=medical_zh model.path=outputs/runs/sft-qwen3-8b-lora/<stamp>
    python train.py stage=eval eval=medical_en model.path=<run> eval.few_shot=5 eval.limit=200
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Tuple

from medgpt.config import RunSettings
from medgpt.errors import UserError
from medgpt.evaluation import benchmarks as bm
from medgpt.evaluation import scoring
from medgpt.leaderboard import format_table
from medgpt.modeling.templates import stop_tokens
from medgpt.runs import predictions_file, suite_results, suite_table

log = logging.getLogger(__name__)
METHODS = ("loglik", "generate")
Messages = List[dict]


class Scorer(Protocol):
    """What a suite asks of a model. `loglik`: for each (chat messages, choices), log p(choice as the assistant's
    reply | messages) per choice. `generate`: the greedy reply to each chat, as text."""

    name: str

    def loglik(self, requests: List[Tuple[Messages, List[str]]]) -> List[List[float]]:
        ...

    def generate(self, prompts: List[Messages], max_new_tokens: int) -> List[str]:
        ...


# ---- the transformers backend ----

class HFScorer:
    """Batched scoring with the loaded transformers model (LoRA included)."""

    name = "hf"

    def __init__(self, model, tokenizer, settings: RunSettings, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length = settings.max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        stops = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens(settings.template)]
        self.stop_ids = sorted({t for t in stops + [tokenizer.eos_token_id]
                                if t is not None and t != tokenizer.unk_token_id})

    def prompt(self, messages: Messages) -> Tuple[str, List[int]]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def continuation(self, text: str, ids: List[int], choice: str) -> List[int]:
        """The tokens `choice` adds after the prompt, as the tokenizer splits prompt + choice."""
        full = self.tokenizer(text + choice, add_special_tokens=False)["input_ids"]
        if full[:len(ids)] == ids and len(full) > len(ids):
            return full[len(ids):]
        return self.tokenizer(choice, add_special_tokens=False)["input_ids"]

    def loglik(self, requests):
        prepared = []  # (prompt ids, [choice ids])
        for messages, choices in requests:
            text, ids = self.prompt(messages)
            conts = [self.continuation(text, ids, c) for c in choices]
            keep = self.max_length - max(map(len, conts))
            prepared.append((ids[-keep:], conts))
        out: List[List[float]] = [[] for _ in requests]
        single = [i for i, (_, conts) in enumerate(prepared) if all(len(c) == 1 for c in conts)]
        # one forward pass per question: the next-token distribution after the prompt, every choice read from it
        picks = [[(0, c[0]) for c in prepared[i][1]] for i in single]
        for i, values in zip(single, self.tail_logprobs([prepared[i][0] for i in single], 1, picks)):
            out[i] = values
        seqs, picks, owners = [], [], []  # multi-token choices: one sequence per choice
        multi = sorted(set(range(len(prepared))) - set(single))
        width = max((len(c) for i in multi for c in prepared[i][1]), default=0) + 1
        for i in multi:
            ids, conts = prepared[i]
            for cont in conts:
                seqs.append(ids + cont)  # the positions width-len-1 .. width-2 of the tail predict the choice
                picks.append([(width - len(cont) - 1 + k, t) for k, t in enumerate(cont)])
                owners.append(i)
        for i, values in zip(owners, self.tail_logprobs(seqs, width, picks)):
            out[i].append(sum(values))
        return out

    def tail_logprobs(self, sequences: List[List[int]], width: int, picks: List[List[Tuple[int, int]]]):
        """For each sequence, log p of the picked (tail position, token) pairs, the tail being its last `width`
        positions (left-padded batches of similar length; only the tail goes through the LM head)."""
        import torch

        out: List[List[float]] = [[] for _ in sequences]
        device = scoring.device_of(self.model)
        with torch.inference_mode():
            for batch in scoring.batches([len(s) for s in sequences], self.batch_size):
                ids = scoring.pad([sequences[i] for i in batch], self.pad_id, left=True).to(device)
                mask = scoring.pad([[1] * len(sequences[i]) for i in batch], 0, left=True).to(device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                try:
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                        logits_to_keep=width).logits
                except TypeError:  # a model without logits_to_keep: every position's logits
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                        use_cache=False).logits
                logp = torch.log_softmax(logits[:, -width:].float(), dim=-1)
                for k, i in enumerate(batch):
                    rows = torch.tensor([r for r, _ in picks[i]], device=logp.device)
                    tokens = torch.tensor([t for _, t in picks[i]], device=logp.device)
                    out[i] = logp[k, rows, tokens].tolist()
        return out

    def generate(self, prompts, max_new_tokens):
        ids = [self.prompt(m)[1][-(self.max_length - max_new_tokens):] for m in prompts]
        new = scoring.generate(self.model, ids, pad_id=self.pad_id, stop_ids=self.stop_ids,
                               max_new_tokens=max_new_tokens, batch_size=self.batch_size)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]


# ---- vLLM (CUDA) ----

def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError("eval.backend=vllm needs vLLM, which is not installed: pip install 'medgpt[vllm]' (CUDA "
                        "only), or use eval.backend=hf") from None
    import torch

    if not torch.cuda.is_available():
        raise UserError("eval.backend=vllm needs a CUDA GPU; none is visible here. Use eval.backend=hf")


class VLLMScorer:
    """vLLM engine on the model's folder (a full model: merge a LoRA first with `medgpt merge`). Log-likelihoods
    from prompt_logprobs of prompt + choice (prefix caching shares the prompt), greedy generation."""

    name = "vllm"

    def __init__(self, path: str, tokenizer, settings: RunSettings, gpu_memory_utilization: float = 0.85):
        from vllm import LLM

        self.hf = HFScorer.__new__(HFScorer)  # its prompt/continuation tokenization, no model
        self.hf.tokenizer, self.hf.max_length = tokenizer, settings.max_length
        stops = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens(settings.template)]
        self.stop_ids = sorted({t for t in stops + [tokenizer.eos_token_id] if t is not None})
        self.seed = settings.seed
        self.llm = LLM(model=path, tokenizer=path, seed=settings.seed, max_model_len=settings.max_length,
                       enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization)

    def loglik(self, requests):
        from vllm import SamplingParams

        seqs, spans, owners = [], [], []
        for i, (messages, choices) in enumerate(requests):
            text, ids = self.hf.prompt(messages)
            for choice in choices:
                cont = self.hf.continuation(text, ids, choice)
                seq = (ids + cont)[-self.hf.max_length:]
                seqs.append({"prompt_token_ids": seq})
                spans.append((len(seq) - len(cont), seq))
                owners.append(i)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, seed=self.seed)
        outputs = self.llm.generate(seqs, params, use_tqdm=False)
        out: List[List[float]] = [[] for _ in requests]
        for (start, seq), owner, result in zip(spans, owners, outputs):
            out[owner].append(sum(result.prompt_logprobs[k][seq[k]].logprob for k in range(start, len(seq))))
        return out

    def generate(self, prompts, max_new_tokens):
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=self.stop_ids,
                                seed=self.seed)
        seqs = [{"prompt_token_ids": self.hf.prompt(m)[1][-(self.hf.max_length - max_new_tokens):]} for m in prompts]
        return [o.outputs[0].text.strip() for o in self.llm.generate(seqs, params, use_tqdm=False)]


def check_backend(cfg) -> None:
    """Before the model loads: a named backend that cannot run here fails with the fix."""
    backend = cfg.eval.backend
    if backend == "vllm":
        require_vllm()
    elif backend not in ("auto", "hf") and ":" not in backend:
        raise UserError(f"eval.backend={backend}: use auto, hf, vllm or <module>:<Scorer class>")
    bad = [m for m in cfg.eval.methods if m not in METHODS]
    if bad or not cfg.eval.methods:
        raise UserError(f"eval.methods={list(cfg.eval.methods)}: use one or both of {', '.join(METHODS)}")


def make_scorer(cfg, model, tokenizer, settings: RunSettings, model_path: str):
    backend = cfg.eval.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() and not _is_adapter(model) else "hf"
    if backend == "hf":
        return HFScorer(model, tokenizer, settings, cfg.eval.batch_size)
    if backend == "vllm":
        if _is_adapter(model):
            raise UserError(f"eval.backend=vllm scores full models; {model_path} is a LoRA adapter: merge it "
                            f"(medgpt merge {model_path}) and pass the merged folder, or use eval.backend=hf")
        import torch

        model.to("cpu")  # the transformers copy leaves the GPU to the engine
        torch.cuda.empty_cache()
        return VLLMScorer(model_path, tokenizer, settings)
    module, _, name = backend.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"eval.backend={backend}: cannot import {name} from {module} ({e})") from None
    return cls(model, tokenizer, settings, cfg)


def _is_adapter(model) -> bool:
    return hasattr(model, "peft_config")


# ---- the suite ----

def load_benchmarks(cfg) -> List[bm.Benchmark]:
    """Every benchmark of the suite, read and validated (no model needed)."""
    check_backend(cfg)
    return [bm.load_benchmark(name, dict(_plain(spec)), hub_root=cfg.eval.hub_root, limit=cfg.eval.limit,
                              few_shot=cfg.eval.few_shot)
            for name, spec in cfg.eval.benchmarks.items()]


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node


def score_benchmark(bench: bm.Benchmark, scorer, cfg, system: Optional[str]) -> Tuple[Dict, List[dict], Dict]:
    """(scores, predictions, timings) of one benchmark with every method in eval.methods."""
    k = cfg.eval.few_shot
    messages = [bm.messages_for(bench, item, k, system) for item in bench.items]
    choices = [bench.choices_of(item) for item in bench.items]
    preds = [{"id": it.id, "subset": it.subset, "gold": it.answer} for it in bench.items]
    timings: Dict[str, float] = {}
    if "loglik" in cfg.eval.methods:
        start = time.perf_counter()
        scores = scorer.loglik(list(zip(messages, choices)))
        timings["loglik_s"] = time.perf_counter() - start
        for pred, options, logps in zip(preds, choices, scores):
            best = max(range(len(options)), key=lambda j: logps[j])  # ties: the first option
            pred["loglik"] = options[best]
            pred["logprobs"] = {o: round(v, 4) for o, v in zip(options, logps)}
    if "generate" in cfg.eval.methods:
        start = time.perf_counter()
        texts = scorer.generate(messages, cfg.eval.max_new_tokens)
        timings["generate_s"] = time.perf_counter() - start
        for pred, options, text in zip(preds, choices, texts):
            pred["generated"] = text
            pred["generate"] = bm.extract(bench.spec["extract"], text, options)
    result: Dict = {"n": len(bench.items)}
    groups = {None: preds}
    subsets = sorted({p["subset"] for p in preds if p["subset"]})
    if len(subsets) > 1:
        groups.update({s: [p for p in preds if p["subset"] == s] for s in subsets})
    for subset, rows in groups.items():
        prefix = f"{subset}/" if subset else ""
        if "loglik" in cfg.eval.methods:
            result[f"{prefix}accuracy"] = sum(p["loglik"] == p["gold"] for p in rows) / len(rows)
        if "generate" in cfg.eval.methods:
            result[f"{prefix}gen_accuracy"] = sum(p["generate"] == p["gold"] for p in rows) / len(rows)
            if not prefix:
                result["gen_unparsed"] = sum(p["generate"] is None for p in rows) / len(rows)
    return result, preds, timings


def run_suite(cfg, run_dir: Path, scorer, benches: List[bm.Benchmark], settings: RunSettings,
              model_path: str) -> Dict:
    """Score each benchmark, write predictions/<benchmark>.jsonl, suite.json (scores with everything needed to
    reproduce them) and suite.md (the table); return the flat metrics for metrics.json."""
    suite = cfg.eval.suite or "suite"
    decoding = {"method": "greedy", "do_sample": False, "max_new_tokens": cfg.eval.max_new_tokens,
                "stop": list(stop_tokens(settings.template)), "max_length": settings.max_length,
                "batch_size": cfg.eval.batch_size}
    record = {"suite": suite, "model_path": model_path, "backend": scorer.name, "seed": settings.seed,
              "few_shot": cfg.eval.few_shot, "methods": list(cfg.eval.methods), "decoding": decoding,
              "template": settings.template, "hub_root": cfg.eval.hub_root, "benchmarks": {}}
    metrics: Dict = {"suite": suite, "eval_seed": settings.seed, "eval_backend": scorer.name}
    total_questions, total_s = 0, 0.0
    for bench in benches:
        bm.choose_shots(bench, cfg.eval.few_shot, settings.seed)
        log.info("benchmark %s: %d questions (%s)", bench.name, len(bench.items), bench.spec["prompt"]["version"])
        scores, preds, timings = score_benchmark(bench, scorer, cfg, cfg.data.system_prompt)
        if cfg.eval.predictions:
            path = predictions_file(run_dir, bench.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
        spec = bench.spec
        fewshot_ids = sorted({s.id for s in bench.shots}) if cfg.eval.few_shot else []
        record["benchmarks"][bench.name] = {
            **scores, "skipped": bench.skipped, "hub_name": spec["hub_name"], "hub_subsets": spec.get("hub_subsets"),
            "hub_split": spec["hub_split"], "hub_data_files": spec.get("hub_data_files"),
            "hub_revision": spec.get("hub_revision"), "prompt_version": spec["prompt"]["version"],
            "prompt": spec["prompt"], "extract": spec["extract"], "fewshot_split": spec.get("fewshot_split"),
            "fewshot_ids": fewshot_ids, **{k: round(v, 3) for k, v in timings.items()}}
        for key, value in scores.items():
            metrics[f"{bench.name}/{key}"] = value
        metrics[f"{bench.name}/skipped"] = sum(bench.skipped.values())
        metrics[f"{bench.name}/prompt_version"] = spec["prompt"]["version"]
        metrics[f"{bench.name}/fewshot_ids"] = fewshot_ids
        total_questions += len(bench.items)
        total_s += sum(timings.values())
    for key in ("accuracy", "gen_accuracy"):
        values = [record["benchmarks"][b.name][key] for b in benches if key in record["benchmarks"][b.name]]
        if values:
            metrics[f"{suite}/macro_{key}"] = record[f"macro_{key}"] = sum(values) / len(values)
    metrics["eval_questions_per_s"] = record["questions_per_s"] = total_questions / total_s if total_s else None
    metrics["eval_decoding"] = decoding
    results, table = suite_results(run_dir), suite_table(run_dir)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    table.write_text(render_table(record), encoding="utf-8")
    print("\n" + render_table(record), flush=True)
    return metrics


def table_rows(record: Dict) -> List[dict]:
    rows = []
    for name, b in record["benchmarks"].items():
        rows.append({"benchmark": name, "n": b["n"], "loglik_acc": b.get("accuracy"),
                     "gen_acc": b.get("gen_accuracy"), "gen_unparsed": b.get("gen_unparsed"),
                     "prompt": b["prompt_version"], "shots": len(b["fewshot_ids"]) and record["few_shot"]})
    rows.append({"benchmark": "macro average", "n": sum(r["n"] for r in rows),
                 "loglik_acc": record.get("macro_accuracy"), "gen_acc": record.get("macro_gen_accuracy")})
    return rows


def render_table(record: Dict) -> str:
    columns = ["benchmark", "n", "loglik_acc", "gen_acc", "gen_unparsed", "prompt", "shots"]
    head = (f"suite {record['suite']}: {record['model_path']} (backend {record['backend']}, seed {record['seed']}, "
            f"{record['few_shot']}-shot, greedy max_new_tokens={record['decoding']['max_new_tokens']})\n\n")
    return head + format_table(table_rows(record), columns=columns, fmt="md")
