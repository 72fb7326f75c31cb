"""SimPO (reference-free, length-normalised preference loss) with trl.experimental.cpo.CPOTrainer,
loss_type=simpo and cpo_alpha=0 (TRL's DPOTrainer has no SimPO loss).

    python train.py stage=simpo data=medical_dpo data.max_samples=200 stage.args.simpo_gamma=0.5
"""
from medgpt.stages.dpo import prepare_pairs, rendered_pairs
from medgpt.training.guard import guarded

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def prepare(rows, tokenizer, cfg, settings):
    """DPO's pairs (no reference model); rendered to text when they carry tools or template variables."""
    return prepare_pairs(rendered_pairs(rows, tokenizer, settings), tokenizer, cfg, settings)


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl.experimental.cpo import CPOTrainer

    return guarded(CPOTrainer)(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                               processing_class=tokenizer, callbacks=callbacks)
