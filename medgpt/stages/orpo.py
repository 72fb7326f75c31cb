"""ORPO (odds-ratio preference optimisation, no reference model) with trl.experimental.orpo.ORPOTrainer: in TRL
1.x it lives in trl.experimental (there is no trl.ORPOTrainer).

    python train.py stage=orpo data=medical_dpo data.max_samples=200 stage.args.beta=0.1

The pair forward goes through medgpt's labelled head (medgpt.training.losses.pair_log_probs): only the positions the
loss reads reach the LM head, a chunk of rows at a time, instead of full-vocabulary logits for every position.
"""
from medgpt.stages.dpo import prepare_pairs, rendered_pairs
from medgpt.training.guard import guarded
from medgpt.training.losses import labelled_loss_applies, pair_log_probs

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def prepare(rows, tokenizer, cfg, settings):
    """DPO's pairs (no reference model to check); rendered to text when they carry tools or template variables."""
    return prepare_pairs(rendered_pairs(rows, tokenizer, settings), tokenizer, cfg, settings)


def pair_head_trainer(base, nll: str, average, padding: str, shifted_logits: bool):
    """`base` (ORPOTrainer or CPOTrainer) whose public `concatenated_forward` computes the same values through
    `pair_log_probs`: NLL targets `nll`, log-probs averaged where `average(trainer)`, padding id from
    `trainer.<padding>`; the "logits" it returns are each position's mean logit (the trainers log only their mean),
    over every position but the last where `shifted_logits`. `labelled_head=False`, encoder-decoder models and MoE
    auxiliary losses keep the trainer's own forward."""
    class PairHeadTrainer(guarded(base)):
        def __init__(self, *args, labelled_head: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.labelled_head = labelled_head and not self.is_encoder_decoder and not self.aux_loss_enabled

        def concatenated_forward(self, model, batch):
            if not self.labelled_head:
                return super().concatenated_forward(model, batch)
            pairs = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=getattr(self, padding),
                                             device=self.accelerator.device)
            chosen = batch["chosen_labels"].shape[0]
            wanted_nll = nll if getattr(self, "cpo_alpha", 1) else ""
            logps, mean_logits, nll_loss = pair_log_probs(
                model, pairs["concatenated_input_ids"], pairs["concatenated_attention_mask"],
                pairs["concatenated_labels"], chosen, nll=wanted_nll, average=average(self))
            if shifted_logits:
                mean_logits = mean_logits[:, :-1]
            return logps[:chosen], logps[chosen:], mean_logits[:chosen], mean_logits[chosen:], nll_loss

    PairHeadTrainer.__name__ = PairHeadTrainer.__qualname__ = f"PairHead{base.__name__}"
    return PairHeadTrainer


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl.experimental.orpo import ORPOTrainer

    trainer = pair_head_trainer(ORPOTrainer, nll="sequence", average=lambda t: True, padding="padding_value",
                                shifted_logits=True)
    return trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                   processing_class=tokenizer, callbacks=callbacks,
                   labelled_head=labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile))
