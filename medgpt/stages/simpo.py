"""SimPO (reference-free, length-normalised preference loss) with trl.experimental.cpo.CPOTrainer,
loss_type=simpo and cpo_alpha=0 (TRL's DPOTrainer has no SimPO loss).

    python train.py stage=simpo data=medical_dpo data.max_samples=200 stage.args.simpo_gamma=0.5

The pair forward goes through medgpt's labelled head, as ORPO's (medgpt.stages.orpo.pair_head_trainer).
"""
from medgpt.stages.dpo import prepare_pairs, rendered_pairs
from medgpt.stages.orpo import pair_head_trainer
from medgpt.training.losses import labelled_loss_applies

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def prepare(rows, tokenizer, cfg, settings):
    """DPO's pairs (no reference model); rendered to text when they carry tools or template variables."""
    return prepare_pairs(rendered_pairs(rows, tokenizer, settings), tokenizer, cfg, settings)


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl.experimental.cpo import CPOTrainer

    trainer = pair_head_trainer(CPOTrainer, nll="completion", average=lambda t: t.loss_type in ("ipo", "simpo"),
                                padding="pad_token_id", shifted_logits=False)
    return trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                   processing_class=tokenizer, callbacks=callbacks,
                   labelled_head=labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile))
