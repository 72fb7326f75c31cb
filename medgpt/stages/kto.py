"""KTO (TRL's KTOTrainer) on unpaired prompt/completion/label data; preference pairs are split into one desirable
(chosen, label true) and one undesirable (rejected, label false) example each. Reference model as for DPO.

    python train.py stage=kto data=kto_demo
    python train.py stage=kto data=medical_dpo data.max_samples=200      # pairs, split automatically
"""
from collections import Counter

from medgpt.errors import UserError
from medgpt.stages.dpo import check_reference, labelled_head_trainer, preference_dataset, reference_model
from medgpt.training.losses import labelled_loss_applies

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def unpaired_rows(rows):
    """Unpaired records as they are; each preference pair -> a desirable and an undesirable example."""
    out = []
    for r in rows:
        tools = {"tools": r["tools"]} if r.get("tools") else {}
        if "completion" in r:
            out.append({"prompt": r["prompt"], "completion": r["completion"], "label": r["label"], **tools})
        else:
            out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True, **tools})
            out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False, **tools})
    return out


def prepare(rows, tokenizer, cfg, settings):
    check_reference(cfg)
    examples = unpaired_rows(rows)
    desirable = sum(e["label"] for e in examples)
    if desirable == 0 or desirable == len(examples):
        raise UserError(f"KTO needs both desirable (label true) and undesirable (label false) examples; the data "
                        f"has {desirable} of {len(examples)} desirable")
    counts = Counter(desirable=desirable, undesirable=len(examples) - desirable,
                     split_pairs=sum("chosen" in r for r in rows))
    return preference_dataset(examples, settings, columns=("prompt", "completion", "label")), counts


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl import KTOTrainer

    trainer = labelled_head_trainer(KTOTrainer, metrics=("entropy", "mean_logits"))  # log-probs of completions only
    return trainer(model=model, ref_model=reference_model(cfg, model), args=args, train_dataset=train_dataset,
                   eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks,
                   labelled_head=labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile))
