"""Chained stages: each stage starts from the previous policy stage's final/ (a stage=rm run becomes the reward
model of a later ppo stage instead), run in this process, then one summary table.

    medgpt pipeline pt,sft,dpo
    medgpt pipeline sft,rm,ppo hardware=lora stage.args.max_steps=20 sft:data=medical_sft dpo:stage.args.beta=0.2
    medgpt pipeline pt,sft,dpo,eval eval:eval=medical_zh       # ends by scoring the DPO model on a benchmark suite

Overrides apply to every stage; `<stage>:<override>` to that stage only (its data, for one: each stage's default
data is `<stage>_demo`). Run folders: <output_root>/pipelines/<stamp>/<n>-<stage>/, summary.json beside them.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from medgpt import runs
from medgpt.config import compose as compose_run
from medgpt.errors import UserError, command
from medgpt.runs import adapter_base
from medgpt.training.run import train

log = logging.getLogger("medgpt")
CONF = Path(__file__).resolve().parents[2] / "conf"
REWARD_STAGES = ("rm",)  # their final/ scores answers; the policy chain goes around them
NEEDS_REWARD_MODEL = ("ppo",)
NEEDS_TEACHER = ("distill",)  # the teacher is never a stage of the chain: give <stage>:stage.teacher=<model>
# what the summary shows per stage, first found wins (trainer log keys)
KEY_METRICS = ("eval_accuracy", "eval_rewards/margins", "rewards/margins", "reward", "eval_loss")


def compose(overrides: Sequence[str]):

    return compose_run(overrides)


def split_overrides(stages: Sequence[str], overrides: Sequence[str]) -> Dict[str, List[str]]:
    """Common overrides for every stage, `<stage>:key=value` for one stage."""
    per_stage: Dict[str, List[str]] = {s: [] for s in stages}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in per_stage:
                raise UserError(f"pipeline override '{item}' names stage '{head}', which is not in the pipeline "
                                f"({','.join(stages)})")
            per_stage[head].append(rest)
        else:
            for s in stages:
                per_stage[s].append(item)
    return per_stage


def stage_overrides(stage: str, own: List[str], policy: Optional[str], reward_model: Optional[str]) -> List[str]:
    """The overrides of one stage: start from the previous policy's final/ (a LoRA adapter is merged into its base so
    the new stage's reference model is that previous model), and the chain's reward model for ppo."""

    out = [f"stage={stage}"]
    if policy:
        out.append(f"model.path={policy}")
        if adapter_base(policy):
            out.append("model.adapter_merge=true")
    if stage in NEEDS_REWARD_MODEL and reward_model and not any(o.startswith("stage.reward_model=") for o in own):
        out.append(f"stage.reward_model={reward_model}")
    return out + own


def plan_check(stages: Sequence[str]) -> None:
    known = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))
    for s in stages:
        if s not in known:
            raise UserError(f"pipeline: unknown stage '{s}'; stages: {', '.join(known)}")
    for i, s in enumerate(stages):
        if s in NEEDS_REWARD_MODEL and not any(p in REWARD_STAGES for p in stages[:i]):
            log.info("pipeline: %s has no rm stage before it: give %s:stage.reward_model=<rm run>", s, s)


def run_pipeline(stages: Sequence[str], overrides: Sequence[str] = (), root: Optional[Path] = None) -> List[dict]:
    """Train the stages in order; returns one metrics dict per stage run (stops at the first failure)."""

    plan_check(stages)
    per_stage = split_overrides(stages, overrides)
    # compose every stage first: a typo in the last stage fails before the first one trains
    configs = [compose(stage_overrides(s, per_stage[s], None, None)) for s in stages]
    for s, cfg in zip(stages, configs):
        if s in NEEDS_TEACHER and not cfg.stage.teacher:
            raise UserError(f"pipeline: {s} needs a teacher: add {s}:stage.teacher=<hub id, folder or run folder>")
    root = root or runs.pipeline_folder(configs[0].output_root)
    results: List[dict] = []
    policy, reward_model = None, None
    for n, s in enumerate(stages, 1):
        cfg = compose(stage_overrides(s, per_stage[s], policy, reward_model))
        run_dir = runs.pipeline_step(root, n, s)
        runs.check_launch(run_dir, None)  # a fresh folder: a pipeline never writes into another run
        runs.lock_run_folder(run_dir)
        log.info("pipeline %d/%d: stage=%s from %s", n, len(stages), s, cfg.model.path)
        try:
            metrics = train(cfg, run_dir)
        except Exception as e:
            user_error = isinstance(e, UserError)  # bad input (a refused model folder, ...): exit status 2
            results.append({"stage": s, "status": "failed", "user_error": user_error,
                            "error": f"{e}" if user_error else f"{type(e).__name__}: {e}",
                            "run_dir": str(run_dir), "model_path": cfg.model.path})
            break
        finally:
            runs.release_run_folder(run_dir)
        metrics["model_path"] = cfg.model.path
        results.append(metrics)
        final = str(runs.final_of(run_dir))
        if s in REWARD_STAGES:
            reward_model = final
        elif cfg.stage.kind == "train":  # an eval stage scores the policy; the next stage still starts from it
            policy = final
    runs.write_json(root / runs.PIPELINE_SUMMARY, {"stages": list(stages), "results": results})
    print(summary_table(results, root), flush=True)
    return results


def key_metric(run_dir: str, metrics: dict):
    """The stage's telling number: eval accuracy (rm), reward margin (dpo), mean reward (grpo/ppo), else eval loss;
    from metrics.json, else the last logged value."""
    rows = runs.log_history(run_dir)
    suite = f"{metrics.get('suite')}/macro_accuracy"  # stage=eval eval=<suite>
    for key in (suite, *KEY_METRICS):
        if isinstance(metrics.get(key), (int, float)):
            return key, float(metrics[key])
        logged = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if logged:
            return key, logged[-1]
    return "", None


def summary_table(results: List[dict], root: Path) -> str:
    header = f"{'#':<3}{'stage':<8}{'status':<11}{'steps':>6}{'train_loss':>12}  {'metric':<24}{'runtime_s':>10}  from"
    lines = ["", "=" * len(header), f"pipeline {root}", header, "-" * len(header)]
    for n, m in enumerate(results, 1):
        name, value = key_metric(m.get("run_dir", ""), m) if m.get("status") == "completed" else ("", None)
        metric = f"{name}={value:.4f}" if value is not None else m.get("error", "")[:60]
        loss, runtime = _fmt(m.get("train_loss"), 4), _fmt(m.get("runtime_s"), 1)
        source = str(m.get("model_path", ""))
        if source.endswith(runs.FINAL):  # "<n>-<stage>" of this pipeline
            source = Path(source).parent.name
        lines.append(f"{n:<3}{m['stage']:<8}{m.get('status', '?'):<11}{m.get('global_step', ''):>6}{loss:>12}  "
                     f"{metric:<24}{runtime:>10}  {source}")
    lines.append("=" * len(header))
    return "\n".join(lines)


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


@command
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    stages = [s.strip() for s in argv[0].split(",") if s.strip()]
    results = run_pipeline(stages, argv[1:])
    if results and results[-1].get("user_error"):
        print(f"error: {results[-1]['error']}", file=sys.stderr)
        return 2
    return 0 if all(r.get("status") == "completed" for r in results) and len(results) == len(stages) else 1
