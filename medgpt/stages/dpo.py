"""Direct preference optimisation (TRL's DPOTrainer) on prompt/chosen/rejected pairs; loss variants by config.

    python train.py stage=dpo data=medical_dpo data.max_samples=200 stage.args.beta=0.1
    python train.py stage=dpo stage.args.loss_type=ipo            # or stage=ipo; SimPO: stage=simpo

The reference model (stage.reference): auto = none with LoRA/QLoRA (the policy with its adapter disabled is the
reference), else a frozen copy of the starting model; copy | none force one of them.
"""
from __future__ import annotations

import copy
import logging
import re
from collections import Counter

from datasets import Dataset

from medgpt.data.tokenize import template_kwargs
from medgpt.errors import UserError
from medgpt.modeling.load import resolve_path
from medgpt.runs import adapter_base
from medgpt.training.guard import guarded
from medgpt.training.losses import add_labelled_lm_head, labelled_loss_applies, trl_head_compacts

log = logging.getLogger("medgpt")
MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run
REFERENCES = ("auto", "copy", "none")


def preference_dataset(rows, settings=None, columns=("prompt", "chosen", "rejected")) -> Dataset:
    """Normalised preference records (conversational prompt/chosen/rejected) -> the columns TRL's pair trainers eat,
    with a record's `tools` (a JSON string, read by TRL's DPO/KTO/Reward trainers) and the run's chat_template_kwargs.
    Messages with tool calls are stored as JSON (datasets.Json), so each call's arguments come back exactly as given
    (Arrow structs would merge the argument keys of all records, filled with nulls)."""
    import json

    from datasets import Features, Json, List, Value

    examples = [{k: r[k] for k in columns} for r in rows]
    kwargs = template_kwargs(settings)
    with_tools = any(r.get("tools") for r in rows)
    for example, r in zip(examples, rows):
        if with_tools:
            example["tools"] = json.dumps(r["tools"], ensure_ascii=False) if r.get("tools") else None
        if kwargs:
            example["chat_template_kwargs"] = kwargs
    calls = any(m.get("tool_calls") for r in rows for k in columns if isinstance(r[k], list) for m in r[k])
    if not examples or not calls:
        return Dataset.from_list(examples)
    features = {k: List(Json()) if isinstance(rows[0][k], list) else Value("bool" if k == "label" else "string")
                for k in columns}
    if with_tools:
        features["tools"] = Value("string")
    if kwargs:
        features["chat_template_kwargs"] = Json()
    return Dataset.from_list(examples, features=Features(features))


def dpo_loss_types():
    """The loss types the installed DPOTrainer knows, read from DPOConfig's own help text."""
    from trl import DPOConfig

    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata.get("help", "")
    return re.findall(r"`'([a-z_]+)'`", help_text.split("If multiple")[0])


def check_loss_type(args_cfg) -> None:
    """Fail before the model loads on a loss the installed DPOTrainer does not have (it only fails mid-step)."""
    import trl

    requested = args_cfg.get("loss_type") or ["sigmoid"]
    requested = [requested] if isinstance(requested, str) else list(requested)
    known = dpo_loss_types()
    for loss in requested:
        if loss == "simpo":
            raise UserError("stage.args.loss_type=simpo: DPOTrainer has no SimPO loss in TRL "
                            f"{trl.__version__}; use stage=simpo (trl.experimental.cpo.CPOTrainer, loss_type=simpo, "
                            "cpo_alpha=0)")
        if known and loss not in known:
            raise UserError(f"stage.args.loss_type={loss}: not a DPO loss in the installed TRL {trl.__version__} "
                            f"(it knows: {', '.join(known)}); a newer TRL may add it (pip install -U trl)")


def check_reference(cfg) -> None:
    if cfg.stage.reference not in REFERENCES:
        raise UserError(f"stage.reference={cfg.stage.reference}: use one of {', '.join(REFERENCES)}")


def prepare_pairs(rows, tokenizer, cfg, settings):
    """The prepare() of pair trainers that truncate long pairs themselves (DPO, ORPO, CPO/SimPO) at settings.max_length.
    A pair whose prompt alone fills it would keep no answer token (length-normalised losses turn NaN): dropped,
    counted."""
    max_length, key = settings.max_length, settings.source("max_length")
    kwargs = template_kwargs(settings)
    kept = [r for r in rows if prompt_tokens(tokenizer, r["prompt"], r.get("tools"), **kwargs) < max_length]
    if len(kept) < len(rows):  # none left: medgpt.data.cache.prepare_split stops (train) or drops eval
        log.warning("dropped %d pair(s) whose prompt fills %s=%s", len(rows) - len(kept), key, max_length)
    return preference_dataset(kept, settings), Counter(pairs=len(kept), dropped_long_prompt=len(rows) - len(kept))


def rendered_pairs(rows, tokenizer, settings):
    """Pairs rendered to text with their tools and chat_template_kwargs, for trainers that apply the chat template
    without them (TRL's experimental ORPO and CPO/SimPO): prompt text + the rest of each rendered conversation."""
    from trl.data_utils import apply_chat_template

    kwargs = template_kwargs(settings)
    if not kwargs and not any(r.get("tools") for r in rows):
        return rows
    return [{**apply_chat_template({k: r[k] for k in ("prompt", "chosen", "rejected")}, tokenizer,
                                   tools=r.get("tools"), **kwargs), "tools": None} for r in rows]


def prompt_tokens(tokenizer, prompt, tools=None, **kwargs) -> int:
    if isinstance(prompt, str):  # already rendered (rendered_pairs)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, tools=tools or None, tokenize=False, add_generation_prompt=True,
                                         **kwargs)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare(rows, tokenizer, cfg, settings):
    if cfg.stage.args.get("_target_", "").endswith("DPOConfig"):
        check_loss_type(cfg.stage.args)
    check_reference(cfg)
    return prepare_pairs(rows, tokenizer, cfg, settings)


def reference_model(cfg, model):
    """(ref_model or None, what it is): a frozen copy, or None = the policy with its LoRA adapter disabled."""
    is_peft = hasattr(model, "peft_config")
    choice = cfg.stage.reference
    if choice == "auto":
        choice = "none" if is_peft else "copy"
    if choice == "none":
        if not is_peft:
            raise UserError("stage.reference=none needs LoRA/QLoRA (hardware=lora): without an adapter to disable "
                            "there is no reference; use stage.reference=copy (a frozen copy)")
        log.info("reference model: the policy with its LoRA adapter disabled (no copy in memory)")
        if adapter_base(resolve_path(cfg.model.path, cfg.model.tiny)) and not cfg.model.adapter_merge:
            log.warning("model.path is a LoRA adapter trained further here: the reference is its base *without* "
                        "that adapter; set model.adapter_merge=true to make the previous model the reference")
        return None
    if is_peft:
        raise UserError("stage.reference=copy with LoRA: the reference is the adapter-disabled policy; "
                        "use stage.reference=auto")
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    log.info("reference model: a frozen copy of the starting model")
    return ref


def labelled_head_trainer(base, metrics: tuple, temperature: float = 1.0):
    """`base` (a TRL trainer that patches its models with `trl.add_fused_lm_head` and reads per-token log-probs
    through `model(..., labels=labels, fused_lm_head=True)`: DPOTrainer, KTOTrainer, GRPOTrainer at its sampling
    `temperature`) whose policy and reference get medgpt's labelled head instead
    (medgpt.training.losses.add_labelled_lm_head): the completion positions only, a chunk of rows at a time, and
    `metrics` (what the trainer logs) computed alongside. `labelled_head=False`, and
    devices where TRL's head is already compact (`trl_head_compacts`: CUDA with Triton), keep TRL's head. Reference
    log-probs precomputed in `base.__init__` (precompute_ref_log_probs) come from TRL's head."""
    class LabelledHeadTrainer(guarded(base)):
        def __init__(self, *args, labelled_head: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.labelled_head = False
            if labelled_head and not trl_head_compacts(self.accelerator.device):
                policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
                wanted = metrics + (("log_sum_sq_probs",) if getattr(self, "use_weighting", False) else ())
                self.labelled_head = add_labelled_lm_head(policy, metrics=wanted, temperature=temperature)
                if self.labelled_head and self.ref_model is not None:
                    add_labelled_lm_head(self.accelerator.unwrap_model(self.ref_model), temperature=temperature)

    LabelledHeadTrainer.__name__ = LabelledHeadTrainer.__qualname__ = f"LabelledHead{base.__name__}"
    return LabelledHeadTrainer


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl import DPOTrainer

    trainer = labelled_head_trainer(DPOTrainer, metrics=("entropy", "mean_logits", "is_top1"))
    return trainer(model=model, ref_model=reference_model(cfg, model), args=args, train_dataset=train_dataset,
                   eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks,
                   labelled_head=labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile))
