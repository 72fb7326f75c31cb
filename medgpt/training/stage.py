"""The stage contract: what the module named by conf/stage/<name>.yaml's `module:` provides, by the stage's `kind`.
medgpt.stages holds one module per stage; medgpt.training.run drives them through these two protocols only.

    python -c "from medgpt.config import compose; from medgpt.training.stage import load_stage; \
print(load_stage(compose(['stage=dpo']).stage))"
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List, Protocol, Tuple, Union, runtime_checkable

from medgpt.errors import UserError


@runtime_checkable
class TrainingStage(Protocol):
    """A stage that trains (kind: train): normalised records -> a dataset -> a TRL trainer."""

    MODEL_KIND: str  # "causal" | "reward": the model class load_model builds
    CACHEABLE: bool  # prepare() only tokenizes: medgpt.data.cache may reuse its output

    def prepare(self, rows: List[dict], tokenizer, cfg, settings) -> Tuple[Any, Dict[str, int]]:
        """Records -> (a datasets.Dataset the trainer eats, counts: truncated, dropped, ...)."""

    def build_trainer(self, cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
        """The stage's trainer (a transformers.Trainer), with medgpt's callbacks passed in."""


@runtime_checkable
class EvaluationStage(Protocol):
    """A stage that scores a model without training (kind: eval)."""

    def load(self, cfg) -> list:
        """What to score, validated before any model loads."""

    def model_kind(self, cfg) -> str:
        """"causal" | "reward": which model class the given model.path holds."""

    def run(self, cfg, run_dir, model, tokenizer, tasks: list, settings) -> Dict[str, Any]:
        """Score the model; the returned metrics go to metrics.json."""


Stage = Union[TrainingStage, EvaluationStage]
PROTOCOLS = {"train": TrainingStage, "eval": EvaluationStage}


def missing(module, protocol) -> List[str]:
    """What `module` lacks of `protocol`: members, or functions whose parameters differ from the protocol's."""
    problems = []
    members = set(protocol.__annotations__) | {n for n, v in vars(protocol).items() if inspect.isfunction(v)
                                                and not n.startswith("_")}
    for name in sorted(members):
        if not hasattr(module, name):
            problems.append(f"{name} (missing)")
            continue
        wanted = getattr(protocol, name, None)
        if inspect.isfunction(wanted):
            expected = [p for p in inspect.signature(wanted).parameters if p != "self"]
            parameters = inspect.signature(getattr(module, name)).parameters
            found = list(parameters)
            takes_any = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())  # a wrapper
            if found != expected and not takes_any:
                problems.append(f"{name}({', '.join(found)}) (expected {name}({', '.join(expected)}))")
    return problems


def load_stage(stage_cfg) -> Stage:
    """The stage module of stage.module, checked against the protocol of stage.kind."""
    if stage_cfg.kind not in PROTOCOLS:
        raise UserError(f"stage.kind={stage_cfg.kind}: use one of {', '.join(PROTOCOLS)}")
    try:
        module = importlib.import_module(stage_cfg.module)
    except ModuleNotFoundError as e:
        raise UserError(f"stage.module={stage_cfg.module}: cannot import it ({e})") from None
    protocol = PROTOCOLS[stage_cfg.kind]
    problems = missing(module, protocol)
    if problems:
        raise UserError(f"stage.module={stage_cfg.module} does not implement {protocol.__name__} "
                        f"(stage.kind={stage_cfg.kind}): {'; '.join(problems)}. See medgpt/training/stage.py")
    return module
