"""ORPO (odds-ratio preference optimisation, no reference model) with trl.experimental.orpo.ORPOTrainer: in TRL
1.x it lives in trl.experimental (there is no trl.ORPOTrainer).

    python train.py stage=orpo data=medical_dpo data.max_samples=200 stage.args.beta=0.1
"""
from medgpt.stages.dpo import prepare_pairs, rendered_pairs
from medgpt.training.guard import guarded

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def prepare(rows, tokenizer, cfg, settings):
    """DPO's pairs (no reference model to check); rendered to text when they carry tools or template variables."""
    return prepare_pairs(rendered_pairs(rows, tokenizer, settings), tokenizer, cfg, settings)


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl.experimental.orpo import ORPOTrainer

    return guarded(ORPOTrainer)(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                processing_class=tokenizer, callbacks=callbacks)
