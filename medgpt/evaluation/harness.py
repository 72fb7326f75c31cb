"""Bridge to lm-evaluation-harness: run its tasks (local task YAMLs; the hub is optional) on the loaded model.

Task folders: medgpt/lm_eval_tasks (medgpt_mcq_demo) plus eval.lm_eval_include. Results land in metrics.json as
lm_eval/<task>/<metric> and in lm_eval/results.json of the run folder.

    pip install 'medgpt[lm-eval]'
    python train.py stage=eval model.path=<run> eval.lm_eval_tasks=[medgpt_mcq_demo] data.eval_files=[]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from medgpt.config import RunSettings
from medgpt.errors import UserError
from medgpt.runs import lm_eval_results

TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("eval.lm_eval_tasks needs lm-evaluation-harness, which is not installed: "
                        "pip install 'medgpt[lm-eval]' (or pip install lm-eval), or drop eval.lm_eval_tasks") from None


def run_lm_eval(cfg, settings: RunSettings, model, tokenizer, run_dir: Path) -> Dict[str, float]:
    """eval.lm_eval_tasks on the loaded model, at the run's max_length and seed (settings)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = [str(TASKS)] + [str(Path(p).expanduser()) for p in cfg.eval.lm_eval_include]
    manager = TaskManager(include_path=include, include_defaults=False)  # indexing lm-eval's own ~10k YAMLs is slow
    if any(t not in manager.all_tasks for t in cfg.eval.lm_eval_tasks):
        manager = TaskManager(include_path=include)  # a built-in task (its data may need the hub)
    unknown = [t for t in cfg.eval.lm_eval_tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"eval.lm_eval_tasks: unknown task(s) {unknown}; give their YAML folder with "
                        f"eval.lm_eval_include=[<folder>] (local tasks: {', '.join(sorted(_local(manager)))})")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.eval.batch_size,
              max_length=settings.max_length)
    results = simple_evaluate(model=lm, tasks=list(cfg.eval.lm_eval_tasks), task_manager=manager,
                              num_fewshot=cfg.eval.few_shot or None, limit=cfg.eval.lm_eval_limit,
                              apply_chat_template=True, random_seed=settings.seed, numpy_random_seed=settings.seed,
                              torch_random_seed=settings.seed, fewshot_random_seed=settings.seed)
    out_file = lm_eval_results(run_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(results["results"], indent=1, default=str), encoding="utf-8")
    return {f"lm_eval/{task}/{key.split(',')[0]}": value for task, scores in results["results"].items()
            for key, value in scores.items()
            if isinstance(value, (int, float)) and "stderr" not in key and key != "alias"}


def _local(manager) -> list:
    return [name for name, info in manager.task_index.items() if str(TASKS) in str(info.get("yaml_path", ""))]
