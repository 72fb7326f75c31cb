"""Evaluation as a stage: no training; scores a model (a run folder, final/, LoRA adapter, hub id) on eval files
and on benchmark suites.

Files come from data.eval_files and eval.files (mcq / qa / chat / text / preference, detected per file); a suite
(eval=medical_zh | medical_en) adds its public benchmarks (medgpt/evaluation/suite.py). Writes metrics.json
(mcq_accuracy, qa_f1, perplexity, pref_accuracy, <file>/<metric>, <benchmark>/accuracy, <suite>/macro_accuracy,
...), predictions/<file or benchmark>.jsonl and, for a suite, suite.md + suite.json.

    python train.py stage=eval model.path=outputs/runs/sft-tiny-cpu/<stamp> data=eval_demo eval.few_shot=2
    python train.py stage=eval eval=medical_zh model.path=outputs/runs/sft-tiny-cpu/<stamp>
"""
from __future__ import annotations

from medgpt.errors import UserError
from medgpt.evaluation.tasks import evaluate, load_tasks
from medgpt.evaluation.harness import require_lm_eval
from medgpt.evaluation.report import log_wandb, publish
from medgpt.evaluation.suite import load_benchmarks, make_scorer, run_suite
from medgpt.evaluation.benchmarks import Benchmark
from medgpt.modeling.load import resolve_path
from medgpt.runs import adapter_base, adapter_config, model_architectures, run_info

def load(cfg):
    """Validated tasks, before any model is loaded (run.py calls this first)."""

    files = list(cfg.data.eval_files) + list(cfg.eval.files)
    if not files and not cfg.eval.lm_eval_tasks and not cfg.eval.benchmarks:
        raise UserError("stage=eval has nothing to score: set data.eval_files=[...] or eval.files=[...] "
                        "(mcq/qa/chat/text/preference files), a suite (eval=medical_zh | medical_en), or "
                        "eval.lm_eval_tasks=[...]")
    if cfg.eval.lm_eval_tasks:
        require_lm_eval()
    tasks = load_tasks(cfg, files) if files else []
    benches = load_benchmarks(cfg) if cfg.eval.benchmarks else []
    if model_kind(cfg) == "reward" and any(t.kind != "preference" for t in tasks):
        raise UserError(f"model.path={cfg.model.path} is a reward model: it can only score preference files, not "
                        f"{', '.join(t.name for t in tasks if t.kind != 'preference')}")
    if benches and model_kind(cfg) == "reward":
        raise UserError(f"model.path={cfg.model.path} is a reward model: benchmark suites score causal models")
    return tasks + benches


def model_kind(cfg) -> str:
    """reward for a reward model (stage=rm output, full or LoRA), else causal."""

    path = resolve_path(cfg.model.path, cfg.model.tiny)
    adapter = adapter_config(path)
    if adapter is not None:
        return "reward" if adapter.get("task_type") == "SEQ_CLS" else "causal"
    architectures = model_architectures(path)
    return "reward" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal"


def run(cfg, run_dir, model, tokenizer, tasks, settings):

    path = resolve_path(cfg.model.path, cfg.model.tiny)
    reference = adapter_base(path) or run_info(path).get("source")  # what a DPO policy started from
    benches = [t for t in tasks if isinstance(t, Benchmark)]
    files = [t for t in tasks if not isinstance(t, Benchmark)]
    metrics = {"model_path": path}
    if files or cfg.eval.lm_eval_tasks:
        metrics.update(evaluate(cfg, run_dir, model, tokenizer, files, settings, reference=reference))
        publish(metrics, run_dir)  # W&B + the files' summary table
    if benches:  # the suite prints its own table (suite.md)
        scores = run_suite(cfg, run_dir, make_scorer(cfg, model, tokenizer, settings, path), benches, settings, path)
        log_wandb(scores)
        metrics.update(scores)
    return metrics
